"""``kamcl``: knowledge-aided momentum contrastive learning (METHODS.md C4).

Paper: Z. Ji, C. Meng, Y. Zhang, Y. Pang, X. Li, "Knowledge-Aided Momentum Contrastive Learning for Remote-Sensing
Image Text Retrieval", IEEE TGRS 2023. Upstream: https://github.com/mcx-mcx/KAMCL (read for facts; this is rsitr's
own code).

Image (query encoder): ResNet-18 -> global = GPO over the f4 positions; low = GPO over the channels of
[f1; up2(f2)] (each channel a token of (H/4)^2 values) -> Linear; high = spatial mean of [f3; up2(f4)] -> Linear;
T = [global; low; high] (3 x D), GPO over [MLP(T); T] -> v; concept c_v = σ(Linear(v)); v <- v + c_v.
Text: uni-skip GRU (every step) -> Linear -> per-word x; GPO over [x; MLP(x)] -> tanh; tag multi-hot m of the
caption (its words in the tag vocabulary) -> Linear; GPO over [t; Linear(m)] -> t; c_t = σ(Linear(t)); t <- t + c_t.
Momentum key encoders (full copies, θ_k <- m θ_k + (1 - m) θ_q before every step, :meth:`on_train_step_start`) and
two FIFO queues of K keys (registered buffers, saved with the weights, so resume is exact). In training ``forward``
computes the MoCo logits (``logits_img`` = [v_q·t_k, v_q·Q_txt] / T, ``logits_txt`` = [t_q·v_k, t_q·Q_img] / T) and
then enqueues v_k and t_k. The loss (losses/kamcl.py + triplet hardest) is configured in ``configs/_base_/kamcl.yaml``.

Files a user provides: ``pretrained/resnet18-f37072fd.pth`` (torchvision ImageNet ResNet-18), the skip-thought
folder ``pretrained/skipthoughts/`` (``dictionary.txt``, ``utable.npy``, ``uni_skip.npz``), and optionally the tag
files made by ``scripts/build_tags.py`` (``tags_path``, ``tag_vocab_path``). With ``tags_path: ""`` the tags are
built from the fold's training captions by the same rule (:func:`image_tags`, :func:`tag_vocabulary`), which gives
the file's tags for those images. Training never runs without tags: a missing tag file, a file whose names match
none of the training images, or tags with no word of the run's vocabulary stop the run with one line.

Where rsitr differs from upstream:

* Tag targets are looked up by ``batch["filenames"]`` in a tag file keyed by filename (upstream used a row index
  into a reshuffled split, so targets belonged to other images, D8).
* The text GPO pools only the real words (upstream passes one length 2L for the whole batch, so padding is pooled
  and a caption's embedding depends on its batch mates); ``upstream_compat: true`` restores it.
* The queues take any batch size (wrap-around writes); upstream asserted K % B == 0.
* The momentum update moves every key-encoder parameter. Upstream's ``_momentum_update_key_encoder`` zips the
  visual query/key and text query/key parameter lists, so it stops at the shortest: only the first
  min(#visual, #text) parameters of each key encoder move (ResNet-18: the whole text key encoder, 38 parameters,
  and the visual one up to ``layer3.0.downsample.1.weight``; the rest keeps its initial copy for ever).
  ``momentum_zip: true`` restores that (on under upstream_compat; rsitr's parameter lists are in upstream's order
  over those 38: the ResNet leads the visual encoder, tests/models/test_parity_train.py checks the updated keys).
* The tag vocabulary is ranked over the images the run trains on (``tag_vocab_from: train``, the default): the
  ``embed_dim`` most frequent tags of the fold's training images in ``tags_path`` that are in the run's word
  vocabulary, by the rule of ``scripts/build_tags.py``. Upstream's ``tag_vocab_path`` file was ranked over the whole
  training split, so with validation folds it holds words of the validation images; ``tag_vocab_from: file``
  restores it (and is used when the model is built without training data, e.g. by test.py, where the checkpoint's
  ``token_to_tag`` buffer carries the vocabulary).
* Not kept: upstream's unused layers (``extract_feature.linear``, ``high_module.gpo``, the ResNet ``fc`` and the
  top-level ``mlp``/``im``/``tx`` heads); :meth:`KAMCL.convert_upstream` consumes and drops them.
* ``backbone`` (default "": the ResNet of ``arch``) may name any timm model (:mod:`models.encoders.multiscale`;
  ``f4`` gets a 1x1 adapter to ``embed_dim``, ``high_fc`` follows the widths), weights from ``backbone_weights``;
  ``finetune_backbone: false`` freezes it, and the query and key encoders then share it (a feature-cache prefix,
  left out of the momentum update). Not upstream.
* The queue still holds earlier keys of the same image (false negatives), as upstream.
* Under DDP every rank enqueues the keys of the whole global batch (all-gathered, as MoCo; upstream's KAMCL code
  enqueued per process) and DDP does not broadcast buffers for this model, so the queues are the same on every rank
  and equal to one process's with the same global batch (tests/engine/test_ddp.py).
"""
from __future__ import annotations

import copy
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from core.config import ModelCfg
from core.dist import all_gather_with_grad
from core.errors import ConfigError, DataError, MissingFileError
from core.files import RequiredFile
from models.base import FrozenPrefix, ModelContext, RetrievalModel
from models.encoders.bert import lock_layers
from models.encoders.cnn import resnet_required_files
from models.encoders.multiscale import (STAGES, StageAdapters, backbone_stages, build_stage_backbone, is_resnet_name,
                                        pack_maps, stage_widths, timm_name, unpack_maps)
from models.encoders.gpo import GPO
from models.encoders.hf_text import load_hf_encoder, random_hf_encoder, text_required_files
from models.encoders.skipthoughts import UniSkip, skipthought_required_files, upstream_uniskip_keys
from models.registry import MODELS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KAMCLParams:
    arch: str = "resnet18"  # torchvision ResNet; layer4 width must equal embed_dim
    backbone: str = ""  # "" = the ResNet of ``arch``; else any timm model name (f4 gets a 1x1 adapter to embed_dim)
    backbone_weights: str = "pretrained/resnet18-f37072fd.pth"  # ImageNet ResNet (or the timm backbone's) weights
    finetune_backbone: bool = True  # paper: the ResNet trains; false freezes it (a feature-cache prefix)
    skipthought_dir: str = "pretrained/skipthoughts"  # dictionary.txt, utable.npy, uni_skip.npz
    text_encoder: str = "skipthoughts"  # skipthoughts (paper) | bert: any BERT-family folder (text_path; deviation)
    text_path: str = ""  # text_encoder=bert: transformers folder (config.json, weights, vocab.txt) or pkg: reference
    text_random: tuple = (64, 2, 2)  # text_encoder=bert with model.pretrained false: hidden, layers, heads
    text_unlocked: int = -1  # text_encoder=bert: -1 = all of it trains; k >= 0 = only its last k layers
    tags_path: str = ""  # scripts/build_tags.py output (keyed by filename); "" = build from the training captions
    tag_vocab_path: str = "data/rsitmd_precomp/tags_label_th_1/tag_vocab_512.json"  # tag words (<= embed_dim)
    tag_vocab_from: str = "train"  # train: rank the tags over the run's training images | file: tag_vocab_path
    image_size: int = 256  # = data.image_size; sizes the low-level Linear ((image_size / 4)**2 inputs)
    dim_word: int = 620  # skip-thought word size
    dim_hidden: int = 2400  # skip-thought GRU size
    text_dropout: float = 0.25  # skip-thought variational dropout
    gpo_dim: int = 32  # GPO positional code / GRU size
    queue_size: int = 8000  # K keys per queue
    momentum: float = 0.999  # key encoder momentum m
    temperature: float = 0.07  # MoCo temperature T
    text_gpo_mask_pad: bool = True  # pool only real words (off under upstream_compat)
    momentum_zip: bool = False  # upstream: update only the first min(#visual, #text) key parameters (on under
    # upstream_compat)


def _mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())


class VisualEncoder(nn.Module):
    """KAMCL image encoder. Returns (v [B, D] incl. concept, c_v [B, D]).

    The backbone is the paper's ResNet (``arch``) or a timm stage net (``backbone``,
    :mod:`models.encoders.multiscale`): the heads are built for its widths, and ``f4``, whose positions become the
    D-wide global feature, gets a 1x1 adapter (``adapt``) when its width is not D.
    """

    def __init__(self, p: KAMCLParams, dim: int, pretrained: bool) -> None:
        super().__init__()
        if p.backbone and is_resnet_name(p.backbone):
            raise ConfigError(f"model.params.backbone: '{p.backbone}' is a torchvision ResNet; set model.params.arch "
                              "for it and leave backbone '' (backbone is for timm models)")
        self.finetune = p.finetune_backbone
        self.backbone = build_stage_backbone(p.backbone or p.arch, pretrained, p.backbone_weights,
                                             f"{p.arch} ImageNet weights (model.params.backbone_weights)",
                                             "model.params.backbone_weights", p.image_size)
        have = stage_widths(self.backbone)
        if not p.backbone:
            self.backbone.fc = nn.Identity()  # the classifier never reaches an embedding
            if have["f4"] != dim:
                raise ConfigError(f"kamcl: the global feature has {have['f4']} channels ({p.arch} layer4) but "
                                  f"embed_dim is {dim}")
        self.backbone.requires_grad_(self.finetune)
        self.adapt = StageAdapters(have, {"f4": dim})
        self.gpo_global = GPO(p.gpo_dim, p.gpo_dim)
        self.low_gpo = GPO(p.gpo_dim, p.gpo_dim)
        self.low_fc = nn.Linear((p.image_size // 4) ** 2, dim)
        self.high_fc = nn.Linear(have["f3"] + dim, dim)  # ResNet-18: 256 + 512 = 768
        self.mlp = _mlp(dim)
        self.gpo = GPO(p.gpo_dim, p.gpo_dim)
        self.concept = nn.Linear(dim, dim)

    def train(self, mode: bool = True) -> "VisualEncoder":
        super().train(mode)
        if not self.finetune:
            self.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics
        return self

    def stages(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """f1..f4 of the backbone, before the adapter (no graph through a frozen backbone)."""
        return backbone_stages(self.backbone, images, self.finetune)

    def head(self, feats: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: f1..f4 from :meth:`stages`. Returns: (v [B, D], c_v [B, D])."""
        f = self.adapt(feats)
        glob = self.gpo_global(f["f4"].flatten(2).transpose(1, 2))  # GPO over the f4 positions
        lower = torch.cat([f["f1"], F.interpolate(f["f2"], scale_factor=2.0, mode="nearest")], dim=1)
        if lower.shape[-1] ** 2 != self.low_fc.in_features:
            raise ConfigError(f"kamcl: images give a {tuple(lower.shape[-2:])} low-level map but the model was built "
                             f"for model.params.image_size={int(self.low_fc.in_features ** 0.5) * 4}")
        low = self.low_fc(self.low_gpo(lower.flatten(2)))  # GPO over the channels, each a token of H*W values
        # mean of [f3; up2(f4)]: nearest 2x upsampling repeats every value 4 times, so its mean is f4's mean
        high = self.high_fc(torch.cat([f["f3"].mean(dim=(2, 3)), f["f4"].mean(dim=(2, 3))], dim=1))
        t = torch.stack([glob, low, high], dim=1)  # [B, 3, D]
        v = self.gpo(torch.cat([self.mlp(t), t], dim=1))
        c = torch.sigmoid(self.concept(v))
        return v + c, c

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: images [B, 3, S, S]. Returns: (v [B, D], c_v [B, D])."""
        return self.head(self.stages(images))


class TextEncoder(nn.Module):
    """KAMCL text encoder. Returns (t [B, D] incl. concept, c_t [B, D])."""

    def __init__(self, p: KAMCLParams, dim: int, vocab_words: list[str], pretrained: bool, mask_pad: bool) -> None:
        super().__init__()
        self.mask_pad = mask_pad
        self._frozen: list[nn.Module] = []
        if p.text_encoder == "bert":  # per-token states of a BERT-family encoder instead of the uni-skip GRU steps
            if pretrained:
                self.bert = load_hf_encoder(p.text_path, "model.params.text_path")
            else:
                hidden, layers, heads = (int(v) for v in p.text_random)
                self.bert = random_hf_encoder(hidden, layers, heads, len(vocab_words))
            self.to_out = nn.Linear(int(self.bert.config.hidden_size), dim)
            self._frozen = lock_layers(self.bert, p.text_unlocked)
        else:
            self.uniskip = UniSkip(vocab_words, p.dim_word, p.dim_hidden, p.text_dropout, p.skipthought_dir,
                                   pretrained)
            self.to_out = nn.Linear(p.dim_hidden, dim)
        self.mlp = _mlp(dim)
        self.gpo_seq = GPO(p.gpo_dim, p.gpo_dim)
        self.tag_linear = nn.Linear(dim, dim)
        self.gpo = GPO(p.gpo_dim, p.gpo_dim)
        self.concept = nn.Linear(dim, dim)

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        for m in self._frozen:
            m.eval()  # locked BERT layers: no dropout
        return self

    @property
    def locked(self) -> bool:
        """True for a BERT text tower that is frozen whole (``text_unlocked: 0``)."""
        return hasattr(self, "bert") and not any(p.requires_grad for p in self.bert.parameters())

    def bert_states(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The BERT tower's last-layer token states [B, L, H] (its padding masked)."""
        mask = (torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths.to(tokens.device)[:, None])
        return self.bert(input_ids=tokens, attention_mask=mask.long()).last_hidden_state

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, multi_hot: torch.Tensor,
                states: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: tokens [B, L] (L = longest caption), lengths [B], multi_hot [B, D]; ``states``: precomputed
        :meth:`bert_states` (a locked tower shared by the query and key encoders). Returns: (t, c_t), [B, D] each."""
        if hasattr(self, "bert"):
            x = self.to_out(self.bert_states(tokens, lengths) if states is None else states)
        else:
            x = self.to_out(self.uniskip(tokens, lengths)[1])  # every step [B, L, D]
        b, L, d = x.shape
        # interleave words and their MLP outputs so the 2 len real elements come first (GPO ignores the order)
        seq = torch.stack([x, self.mlp(x)], dim=2).reshape(b, 2 * L, d)
        n = 2 * lengths if self.mask_pad else torch.full_like(lengths, 2 * L)
        t = torch.tanh(self.gpo_seq(seq, n))
        t = self.gpo(torch.stack([t, self.tag_linear(multi_hot)], dim=1))
        c = torch.sigmoid(self.concept(t))
        return t + c, c


@MODELS.register("kamcl")
class KAMCL(RetrievalModel):
    """KAMCL dual encoder with momentum key encoders and queues (cosine similarity of the query encoders)."""

    Params = KAMCLParams
    # the queues are kept equal on every rank by gathering the keys; DDP must not overwrite them with rank 0's
    ddp_broadcast_buffers = False

    @classmethod
    def required_files(cls, cfg: ModelCfg, params: KAMCLParams) -> list[RequiredFile]:
        """ResNet weights, the skip-thought release and the tag files (pretrained only)."""
        if not cfg.pretrained:
            return []
        if params.backbone:
            needs = [RequiredFile("model.params.backbone_weights", params.backbone_weights,
                                  f"weights of timm backbone '{timm_name(params.backbone)}'")]
        else:
            needs = resnet_required_files(params.backbone_weights, f"{params.arch} ImageNet weights, torchvision "
                                          "resnet18-f37072fd.pth", "model.params.backbone_weights")
        needs += text_required_files(params.text_path, "model.params.text_path") if params.text_encoder == "bert" \
            else skipthought_required_files(params.skipthought_dir)
        files = [("tags_path", "per-image tags")] if params.tags_path else []
        if params.tag_vocab_from == "file":
            files.append(("tag_vocab_path", "tag vocabulary"))
        return needs + [RequiredFile(f"model.params.{key}", getattr(params, key), f"{what}; make it with "
                                     "scripts/build_tags.py") for key, what in files]

    def __init__(self, cfg: ModelCfg, params: KAMCLParams, ctx: ModelContext) -> None:
        super().__init__()
        words = kamcl_token_words(params, ctx)
        dim, self.p = cfg.embed_dim, params
        self.visual_q = VisualEncoder(params, dim, cfg.pretrained)
        self.text_q = TextEncoder(params, dim, words, cfg.pretrained,
                                  params.text_gpo_mask_pad and not cfg.upstream_compat)
        self.momentum_zip = params.momentum_zip or cfg.upstream_compat
        self.visual_k = copy.deepcopy(self.visual_q).requires_grad_(False)
        if not params.finetune_backbone:  # one frozen backbone serves both encoders (its weights never move)
            self.visual_k.backbone = self.visual_q.backbone
        self._prefixes = {} if params.finetune_backbone else {
            "image": FrozenPrefix([self.visual_q.backbone], self._stage_rows,
                                  f"stages:{params.backbone or params.arch}:f1-f4")}
        self.text_k = copy.deepcopy(self.text_q).requires_grad_(False)
        if self.text_q.locked:  # one locked BERT serves both text encoders (its weights never move)
            self.text_k.bert = self.text_q.bert
        for name in ("im", "tx"):
            self.register_buffer(f"queue_{name}", F.normalize(torch.randn(dim, params.queue_size), dim=0))
            self.register_buffer(f"queue_ptr_{name}", torch.zeros(1, dtype=torch.long))
        if params.tag_vocab_from not in ("train", "file"):
            raise ConfigError(f"model.params.tag_vocab_from must be train or file, got '{params.tag_vocab_from}'")
        tag_words, self.tag_targets = load_tags(params, dim, words, ctx.train_images, ctx.train_captions)
        # caption token id -> tag index (-1: not a tag); a buffer, so checkpoints carry the tag vocabulary. Word
        # vocabularies start at id 1 (0 = padding); a WordPiece vocabulary's id i is its line i ([PAD] = 0).
        index = {w: i for i, w in enumerate(tag_words)}
        ids = [-1] + [index.get(w, -1) for w in words] if params.text_encoder != "bert" else \
            [index.get(w, -1) for w in words]
        self.register_buffer("token_to_tag", torch.tensor(ids))

    # ----------------------------------------------------------------------------------------------- encoders
    def tag_multi_hot(self, tokens: torch.Tensor) -> torch.Tensor:
        """Args: tokens [B, L]. Returns: float [B, D], 1 where a caption word is tag j."""
        tags = self.token_to_tag[tokens.clamp(0, self.token_to_tag.shape[0] - 1)]
        out = torch.zeros(tokens.shape[0], self.queue_im.shape[0] + 1, device=tokens.device)
        out.scatter_(1, torch.where(tags >= 0, tags, out.shape[1] - 1), 1.0)  # non-tags go to a spare column
        return out[:, :-1]

    def _text_inputs(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lengths = batch["lengths"].clamp(min=1)
        tokens = batch["tokens"][:, :int(lengths.max())]
        return tokens, lengths, self.tag_multi_hot(tokens)

    def frozen_prefixes(self) -> dict[str, FrozenPrefix]:
        """With ``finetune_backbone: false``: the backbone's f1..f4 maps per image (shared by both encoders)."""
        return self._prefixes

    def _stage_rows(self, batch: Mapping[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            return pack_maps(self.visual_q.stages(batch["images"]), STAGES)

    def _image_stages(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """f1..f4 from the feature cache when it holds every image of the batch, else from the backbone."""
        store = self._prefixes["image"].store if self._prefixes else None
        rows = store.get_alias(batch["filenames"]) if store is not None and "filenames" in batch else None
        if rows is not None:
            return unpack_maps(rows.to(self.queue_im.device), STAGES)
        return self.visual_q.stages(batch["images"])

    def encode_image(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Args: batch["images"] [N, 3, S, S]. Returns: [N, D] (query encoder)."""
        return self.visual_q.head(self._image_stages(batch))[0]

    def encode_text(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Args: batch["tokens"] [M, L], batch["lengths"] [M]. Returns: [M, D] (query encoder)."""
        return self.text_q(*self._text_inputs(batch))[0]

    # ----------------------------------------------------------------------------------------------- training
    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Training outputs: img_emb, txt_emb, concept_img, concept_txt [B, D]; in training mode also
        logits_img, logits_txt [B, 1 + K] (already / T) and tag_target [B, D]; the keys are then enqueued."""
        text = self._text_inputs(batch)
        feats = None if self.p.finetune_backbone else self._image_stages(batch)
        v, cv = self.visual_q(batch["images"]) if feats is None else self.visual_q.head(feats)
        states = None
        if self.text_q.locked:
            with torch.no_grad():
                states = self.text_q.bert_states(text[0], text[1])
        t, ct = self.text_q(*text, states=states)
        out = {"img_emb": v, "txt_emb": t, "concept_img": cv, "concept_txt": ct}
        if not self.training:
            return out
        out["tag_target"] = self.tag_target(batch["filenames"]).to(v.device)
        dtype = self.queue_tx.dtype  # logits in the queues' precision (float32 under bf16 autocast)
        with torch.no_grad():
            vk = self.visual_k(batch["images"])[0] if feats is None else self.visual_k.head(feats)[0]
            vk = F.normalize(vk.to(dtype), dim=-1)
            tk = F.normalize(self.text_k(*text, states=states)[0].to(dtype), dim=-1)
        vq, tq = F.normalize(v.to(dtype), dim=-1), F.normalize(t.to(dtype), dim=-1)
        temp = self.p.temperature
        out["logits_img"] = torch.cat([(vq * tk).sum(-1, keepdim=True), vq @ self.queue_tx.clone()], 1) / temp
        out["logits_txt"] = torch.cat([(tq * vk).sum(-1, keepdim=True), tq @ self.queue_im.clone()], 1) / temp
        # every rank enqueues the keys of the whole global batch, in global order (MoCo's concat_all_gather): the
        # queues stay identical on every rank and equal to those of one process with the same global batch
        self.enqueue("im", all_gather_with_grad(vk))
        self.enqueue("tx", all_gather_with_grad(tk))
        return out

    def tag_target(self, filenames: list[str]) -> torch.Tensor:
        """Per-image tag targets [B, D] (count / max count of the image's tags; zeros for unknown images)."""
        zero = torch.zeros(self.queue_im.shape[0])
        return torch.stack([self.tag_targets.get(Path(f).name, zero) for f in filenames])

    @torch.no_grad()
    def enqueue(self, name: str, keys: torch.Tensor) -> None:
        """Write ``keys`` [B, D] into queue ``name`` (``im``/``tx``) at its pointer, wrapping around; advance it."""
        queue, ptr = getattr(self, f"queue_{name}"), getattr(self, f"queue_ptr_{name}")
        k = queue.shape[1]
        keys = keys[-k:]  # a batch larger than the queue keeps its last K keys
        idx = (int(ptr) + torch.arange(keys.shape[0], device=queue.device)) % k
        queue[:, idx] = keys.t().to(queue.dtype)
        ptr[0] = (int(ptr) + keys.shape[0]) % k

    def momentum_pairs(self) -> list[tuple[str, str]]:
        """(query name, key name) of every parameter pair the momentum update moves, in update order.

        All parameters; with ``momentum_zip`` upstream's ``zip(visual_q, visual_k, text_q, text_k)``, which stops at
        the shorter encoder: the first min(#visual, #text) parameters of each.
        """
        lists = [[(f"{q}.{n}", f"{k}.{n}") for n, _ in getattr(self, q).named_parameters()]
                 for q, k in (("visual_q", "visual_k"), ("text_q", "text_k"))]
        if self.momentum_zip:
            n = min(len(pairs) for pairs in lists)
            lists = [pairs[:n] for pairs in lists]
        return lists[0] + lists[1]

    @torch.no_grad()
    def on_train_step_start(self) -> None:
        """Momentum update of the key encoders: θ_k <- m θ_k + (1 - m) θ_q (parameters only, as upstream; with
        ``momentum_zip`` only the pairs upstream's zip reaches, :meth:`momentum_pairs`; frozen query parameters (a
        shared frozen backbone, locked BERT layers) equal their keys since the copy and are left out)."""
        m = self.p.momentum
        named = dict(self.named_parameters(remove_duplicate=False))
        pairs = [(named[k], named[q]) for q, k in self.momentum_pairs()
                 if named[k] is not named[q] and named[q].requires_grad]
        keys, queries = [k for k, _ in pairs], [q.detach() for _, q in pairs]
        torch._foreach_mul_(keys, m)  # one multi-tensor op each instead of two ops per parameter
        torch._foreach_add_(keys, queries, alpha=1.0 - m)

    # ----------------------------------------------------------------------------------------------- upstream
    def convert_upstream(self, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
        """Map a KAMCL state dict (``upstream_keys/kamcl.txt``) to this model."""
        return convert_kamcl_upstream(state)


def kamcl_token_words(p: KAMCLParams, ctx: ModelContext) -> list[str]:
    """The words of the caption token ids: the run's word vocabulary (skip-thoughts, ids from 1), or the
    WordPiece vocabulary of the BERT-family folder (``text_encoder: bert``, id i = line i of its vocab.txt; tags are
    then the caption words that are one WordPiece token)."""
    if p.text_encoder not in ("skipthoughts", "bert"):
        raise ConfigError(f"model.params.text_encoder must be skipthoughts or bert, got '{p.text_encoder}'")
    if p.text_encoder == "skipthoughts":
        if ctx.vocab_size <= 1 or ctx.vocab_words is None:
            raise ConfigError("kamcl needs a word vocabulary (data.tokenizer: vocab), or model.params.text_encoder="
                              "bert with data.tokenizer: bert")
        return list(ctx.vocab_words)
    if ctx.vocab_words is not None:
        raise ConfigError("kamcl with model.params.text_encoder=bert needs data.tokenizer: bert (its tokenizer_path "
                          "the same folder as model.params.text_path)")
    vocab = Path(p.text_path) / "vocab.txt" if p.text_path else None
    if vocab is None or not vocab.is_file():
        raise MissingFileError(f"model.params.text_path: {vocab or '(not set)'} not found; kamcl with text_encoder="
                               "bert reads the folder's WordPiece vocabulary for its tags")
    words = vocab.read_text(encoding="utf-8").splitlines()
    if ctx.vocab_size > len(words):
        raise ConfigError(f"the tokenizer has {ctx.vocab_size} ids but {vocab} {len(words)} lines: data.tokenizer_path "
                          "must be the folder of model.params.text_path")
    return words


def convert_kamcl_upstream(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Upstream KAMCL keys -> rsitr keys (see the module docstring for the dropped ones)."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    vis = {"extract_feature.resnet.": "backbone.", "extract_feature.gpo.": "gpo_global.", "low_module.gpo.": "low_gpo.",
           "low_module.fc.": "low_fc.", "high_module.fc.": "high_fc.", "mlp.": "mlp.", "gpo.": "gpo.",
           "im.0.": "concept."}
    txt = {"text_feature.to_out.": "to_out.", "text_feature.mlp.": "mlp.", "text_feature.gpo.": "gpo_seq.",
           "tx.0.": "concept.", "gpo.": "gpo.", "linear.": "tag_linear."}
    dropped = ("extract_feature.resnet.fc.", "extract_feature.linear.", "high_module.gpo.")
    plan = []
    for src, dst in (("visualmodelQ.", "visual_q."), ("visualmodelK.", "visual_k.")):
        plan += [(src + d, None) for d in dropped] + [(src + a, dst + b) for a, b in vis.items()]
    for src, dst in (("textmodelQ.", "text_q."), ("textmodelK.", "text_k.")):
        plan += [(src + a, dst + b) for a, b in txt.items()]
        for own, up in upstream_uniskip_keys(f"{src}text_feature.seq2vec.", f"{dst}uniskip.").items():
            if up in state:
                out[own] = state[up]
                used.add(up)
    plan += [(k, k) for k in ("queue_im", "queue_ptr_im", "queue_tx", "queue_ptr_tx")]
    plan += [(k, None) for k in ("mlp.", "im.", "tx.")]  # top-level heads upstream defines but never calls
    for key, value in state.items():
        if key in used:
            continue
        for src, dst in plan:
            if key == src or (src.endswith(".") and key.startswith(src)):
                if dst is not None:
                    out[dst + key[len(src):]] = value
                used.add(key)
                break
    return out, used


_NON_ALNUM = re.compile(r"[^A-Za-z0-9]")
TAG_THRESHOLD = 1  # an image's word is a tag when its captions hold it more than this often (build_tags.py default)


def caption_words(caption: str) -> list[str]:
    """Upstream ``clean_str`` words: non-alphanumerics -> spaces, lower-case, split (empty strings dropped)."""
    return [w for w in _NON_ALNUM.sub(" ", caption).strip().lower().split(" ") if w]


def image_tags(captions: list[str], threshold: int = TAG_THRESHOLD) -> list[tuple[str, int]]:
    """Words of one image's captions with their counts, most frequent first (ties in first-seen order), counts
    > ``threshold``: one line of ``scripts/build_tags.py``'s tag file."""
    counts = Counter(w for c in captions for w in caption_words(c))
    ranked = sorted(counts.items(), key=lambda wc: wc[1], reverse=True)  # stable: ties keep first-seen order
    return [(w, c) for w, c in ranked if c > threshold]


def tag_vocabulary(per_image: list[list[tuple[str, float]]], vocab_words: set[str], size: int
                   ) -> tuple[list[str], list[tuple[str, float]]]:
    """(top ``size`` tags, every vocabulary tag with its total count) over ``per_image`` (each image's (word, count)
    pairs): counts summed over the images, most frequent first, ties in first-seen order, words outside
    ``vocab_words`` dropped. The rule of ``scripts/build_tags.py`` (upstream ``get_concept_tags.py``)."""
    total: Counter = Counter()
    for tags in per_image:
        for w, c in tags:
            total[w] += c
    ranked = [(w, c) for w, c in total.most_common() if w in vocab_words]
    return [w for w, _ in ranked[:size]], ranked


TagLines = list[tuple[str, list[tuple[str, float]]]]  # (image file name, its (word, count) pairs)


def read_tag_file(path: Path) -> TagLines:
    """The lines of a ``scripts/build_tags.py`` tag file; a malformed line is a DataError naming file and line."""
    lines: TagLines = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        name, _, rest = line.partition("\t")
        try:
            pairs = [(w, float(c)) for w, c in (x.rsplit(":", 1) for x in rest.split())]
        except ValueError:
            raise DataError(f"{path}:{n}: expected '<filename>\\t<word>:<count> ...', got {line[:80]!r}; "
                            "rebuild it with scripts/build_tags.py") from None
        lines.append((name.strip(), pairs))
    return lines


def _training_tag_lines(p: KAMCLParams, train_images: list[str], train_captions: list[list[str]] | None
                        ) -> tuple[TagLines, str]:
    """(tag lines, where they come from) for a run that trains on ``train_images``."""
    if not p.tags_path:
        if train_captions is None or len(train_captions) != len(train_images):
            raise ConfigError("kamcl: model.params.tags_path is '' (build the tags from the training captions) but the "
                              "model was given no training captions")
        return [(n, [(w, float(c)) for w, c in image_tags(caps)]) for n, caps in zip(train_images, train_captions)], \
            "the fold's training captions"
    path = Path(p.tags_path)
    if not path.is_file():
        raise MissingFileError(f"model.params.tags_path: {path} not found; make it with scripts/build_tags.py, or set "
                               "model.params.tags_path='' to build the tags from the fold's training captions")
    lines = read_tag_file(path)
    names = {name for name, _ in lines}
    missing = [n for n in train_images if n not in names]
    if len(missing) == len(train_images):
        raise DataError(f"{path}: none of its {len(names)} image names is one of the {len(train_images)} training "
                        f"images (e.g. {lines[0][0] if lines else 'no line'!r} vs {train_images[0]!r}); it was made "
                        "for other data: rebuild it with scripts/build_tags.py on this dataset, or set "
                        "model.params.tags_path='' to build the tags from the fold's training captions")
    if missing:
        log.warning("kamcl: %d of %d training images have no line in %s (their concept targets are zero), e.g. %s",
                    len(missing), len(train_images), path, ", ".join(missing[:3]))
    return lines, str(path)


def _targets(lines: TagLines, words: list[str], dim: int) -> dict[str, torch.Tensor]:
    """Per-image targets [dim]: count / max count over the image's listed words, at the words' tag slots."""
    index = {w: i for i, w in enumerate(words)}
    targets: dict[str, torch.Tensor] = {}
    for name, pairs in lines:
        y = torch.zeros(dim)
        if pairs:
            top = max(c for _, c in pairs)
            for w, c in pairs:
                if w in index:
                    y[index[w]] = c / top
        targets[name] = y
    return targets


def load_tags(p: KAMCLParams, dim: int, vocab_words: list[str] | None = None,
              train_images: list[str] | None = None, train_captions: list[list[str]] | None = None
              ) -> tuple[list[str], dict[str, torch.Tensor]]:
    """The tag vocabulary and the per-image targets (count / max count over the image's listed words).

    For a run that trains (``train_images`` given): the tag lines come from ``tags_path``, or, when it is "", from
    ``train_captions`` (each training image's captions) by :func:`image_tags`; the vocabulary is ranked over the
    training images' lines in ``vocab_words`` (:func:`tag_vocabulary`), or read from ``tag_vocab_path``
    (``tag_vocab_from: file``). Without training data (test.py, inference: the checkpoint's ``token_to_tag``
    carries the vocabulary, and targets are only read in training) the files are read when both exist, else
    ([], {}) is returned.

    Raises:
        MissingFileError: ``tags_path`` / ``tag_vocab_path`` (file mode) is missing in a run that trains.
        DataError: a malformed tag line; a tag file that names none of the training images; no tag word in the
            run's vocabulary.
    """
    vocab_path = Path(p.tag_vocab_path)
    if train_images is None:
        if not (p.tags_path and Path(p.tags_path).is_file() and vocab_path.is_file()):
            log.info("kamcl built without training data and tag files: the tag vocabulary comes from the checkpoint")
            return [], {}
        lines = read_tag_file(Path(p.tags_path))
        words = json.loads(vocab_path.read_text())[:dim]
        return words, _targets(lines, words, dim)
    lines, source = _training_tag_lines(p, train_images, train_captions)
    keep = set(train_images)
    if p.tag_vocab_from == "file":
        if not vocab_path.is_file():
            raise MissingFileError(f"model.params.tag_vocab_path: {vocab_path} not found (tag_vocab_from: file); make "
                                   "it with scripts/build_tags.py, or set model.params.tag_vocab_from=train")
        words = json.loads(vocab_path.read_text())[:dim]
    else:
        words = tag_vocabulary([pairs for name, pairs in lines if name in keep], set(vocab_words or ()), dim)[0]
    if not words:
        raise DataError(f"kamcl: the tags of the {len(keep)} training images ({source}) hold no word of the run's "
                        "vocabulary, so every concept target would be zero; check the tag file and data.vocab")
    log.info("kamcl: %d tag words; concept targets of %d training images from %s", len(words), len(keep), source)
    return words, _targets([(name, pairs) for name, pairs in lines if name in keep], words, dim)
