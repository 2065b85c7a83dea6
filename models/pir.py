"""``pir``: Prior Instruction Representation (PIR), METHODS.md C5.

Paper: J. Pan, M. Ma, Q. Ma, C. Bai, S. Chen, "PIR: Remote Sensing Image-Text Retrieval with Prior Instruction
Representation Learning", ACM MM 2023. Upstream: https://github.com/Zjut-MultimediaPlus/PIR-pytorch (X-VLM lineage).

Towers: Swin-T (timm, ImageNet-22k weights from ``pretrained/swin_tiny_patch4_window7_224_22k.pth``), BERT-base
(``pretrained/bert-base-uncased/`` with config.json, model.safetensors or pytorch_model.bin, vocab.txt) and a frozen
AID ResNet-50 (``pretrained/aid_28-rsp-resnet-50-ckpt.pth``, RSP release). All three are user-provided local files.

* VIR (image): Swin tokens (avg "CLS" + patches) -> ``vision_proj``; the ResNet GAP feature -> ``conv_proj``
  (the prior). Tokens are scored by ``softmax(token · conv)`` and the top ``filter_size`` kept in score order
  (:func:`select_tokens`); ``instru_num`` rounds of self-attention and a cross block whose queries are
  ``mapping_img[i](conv)`` copied once per kept token; ``img = norm(CLS + drop(head_img(X[0])))``.
* LCA (text): BERT tokens -> ``text_proj``; ``cycle_num`` rounds of self-attention and a cross block whose queries
  are ``mapping_txt[i]`` of the round's input; ``txt = norm(CLS + drop(head_txt(X[0])))``.
* Cross blocks (published architecture, models/encoders/blocks.py): the residual goes to the key/value input (the
  self-attended tokens), ``X = LN(X + attn(q, X, X))``; the queries only steer the attention.
* Learnable temperatures ``temp`` (InfoNCE) and ``temp2`` (affiliation loss), initialised to 0.07, returned by
  ``forward``; the losses (``infonce`` multi-positive + ``affiliation``) live in losses/.

Where rsitr differs from upstream (each a flag; ``model.upstream_compat: true`` restores upstream numerics):

* BERT and the text attention blocks see the attention mask (upstream attends to padding; E). Compat: no mask,
  so a caption's embedding depends on how far its batch is padded: upstream evaluates text in batches of 128 padded
  to the longest caption, which the configs reproduce with ``data.eval_batch_size: 128`` (the loader pads each
  batch to its longest caption, in file order).
* Token selection: with large token-prior products the softmax rounds most scores to exactly 0, so the order of
  ties decides which tokens are kept. Upstream sorts descending and keeps the first ``filter_size``; compat does
  the same with a stable sort (ties broken by token index, lowest first). The default uses ``topk`` (ties in no
  defined order).
* The frozen ResNet is kept in eval mode so its BatchNorm statistics do not drift (D10; ``resnet_bn: train`` is
  upstream's behaviour: ``model.train()`` puts the frozen BatchNorm in train mode, so it normalises with batch
  statistics). The ResNet output is flattened, not squeezed (upstream breaks on batch size 1).
* BERT's word embedding keeps transformers' ``padding_idx`` (0), so the [PAD] row never trains. Upstream's own
  ``models/bert.py`` embedding has none and, with the padding attended, the [PAD] row gets a gradient
  (``bert_pad_grad: true``, on under upstream_compat; the forward is the same either way).
* Losses (configs/_base_/pir.yaml, losses/): upstream PIR's affiliation centres are plain same-scene means; the
  config keeps the affiliation default ``eps: 6e-5`` (FISVL's smoothing; ~1e-5 relative on the term), ``eps: 0``
  is upstream. Upstream's affiliation text term is transposed (``affiliation.upstream_compat: true``, see
  losses/affiliation.py). tests/models/test_parity_train.py checks one training step (every loss term, the total
  and every gradient norm) against the upstream code.
* The best epoch is chosen on the validation split by the engine; upstream picked it on the test split (D2).
  Upstream trains on one fixed JSON split, which equals SWAN's stratified split: ``data.protocol: fixed`` with
  ``data.split_dir`` reproduces it exactly, ``stratified`` (the default here) draws an equivalent one.
* PIR's blocks use textbook q/k/v attention; SWAN's argument mix-up (models/encoders/sfgs.py) is not in PIR's
  code: tests/models/test_parity.py matches the upstream outputs without it.

Published checkpoints (``model.init_from: upstream:PATH``): every key of upstream_keys/pir.txt is placed by
:meth:`PIR.convert_upstream` (Swin patch-merging keys shift one stage; ``conv_encoder.{0,1,4..7}`` are the
torchvision ResNet children).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from core.config import ModelCfg
from core.errors import ConfigError
from models.base import FrozenPrefix, ModelContext, RetrievalModel
from core.files import RequiredFile
from models.encoders.bert import bert_required_files, bert_tokens, build_bert, lock_layers
from models.encoders.blocks import CrossBlock, SABlock
from models.encoders.cnn import build_resnet, resnet_required_files
from models.encoders.multiscale import build_stage_backbone, pack_maps, stage_features, stage_widths, timm_name, \
    unpack_maps
from models.encoders.swin import build_swin, convert_swin_upstream, swin_required_files, swin_tokens
from models.registry import MODELS

log = logging.getLogger(__name__)

BERT_BASE_VOCAB = 30522
_PIR_CONV = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


@dataclass(frozen=True)
class TowerParams:
    """Swin / BERT / ResNet settings shared by PIR and FISVL."""

    swin_weights: str = "pretrained/swin_tiny_patch4_window7_224_22k.pth"  # Microsoft or timm Swin-T file
    swin_img_size: int = 224  # input side the Swin is built for
    swin_embed_dim: int = 96
    swin_depths: tuple[int, ...] = (2, 2, 6, 2)
    swin_heads: tuple[int, ...] = (3, 6, 12, 24)
    swin_window: int = 7
    swin_drop_path: float = 0.1  # stochastic depth (upstream 0.1)
    bert_path: str = "pretrained/bert-base-uncased"  # local HF directory (config.json, weights, vocab.txt)
    bert_vocab_size: int = 0  # random init only; 0 = ctx.vocab_size (30522 for bert-base-uncased)
    bert_unlocked: int = -1  # -1: the whole BERT trains (upstream); k >= 0: only its last k layers (the rest frozen)
    bert_hidden: int = 768  # random init sizes (BERT-base defaults; tiny for tests)
    bert_layers: int = 12
    bert_heads: int = 12
    bert_intermediate: int = 3072
    bert_max_positions: int = 512
    vision_backbone: str = ""  # "" = the Swin above; else a timm model whose stride-32 map gives the tokens
    vision_weights: str = ""  # weights of vision_backbone (local file or pkg: reference)
    finetune_vision: bool = True  # upstream fine-tunes the Swin; false freezes a timm vision backbone
    resnet_arch: str = "resnet50"  # AID ResNet-50 upstream; resnet18 for tiny tests
    resnet_weights: str = "pretrained/aid_28-rsp-resnet-50-ckpt.pth"  # AID RSP (key "model") or torchvision file
    prior_backbone: str = ""  # "" = the ResNet of resnet_arch; a timm model; "vision": the frozen vision backbone
    prior_weights: str = ""  # weights of prior_backbone (local file or pkg: reference)
    finetune_resnet: bool = False  # upstream freezes the ResNet (the prior, whichever backbone it is)
    resnet_bn: str = "eval"  # frozen ResNet BatchNorm: eval (rsitr) | train (upstream: statistics drift)
    bert_pad_grad: bool = False  # upstream: BERT word embedding without padding_idx, so the [PAD] row trains (on
    # under upstream_compat)
    dropout: float = 0.2  # upstream dropout_r
    temp: float = 0.07  # initial InfoNCE temperature
    temp2: float = 0.07  # initial affiliation-loss temperature


@dataclass(frozen=True)
class PIRParams(TowerParams):
    heads: int = 8  # attention heads of the VIR / LCA blocks
    filter_size: int = 40  # Swin tokens kept by the prior scores
    instru_num: int = 2  # VIR rounds
    cycle_num: int = 3  # LCA rounds
    text_mask: bool = True  # mask padding in BERT and LCA (upstream_compat: false)


def select_tokens(tokens: torch.Tensor, prior: torch.Tensor, k: int, stable: bool = False) -> torch.Tensor:
    """VIR filtering: keep the ``k`` tokens with the highest ``softmax(token · prior)``, best first.

    Args:
        tokens: [B, N, D]; prior: [B, D]; k: tokens kept (capped at N).
        stable: upstream selection, a stable descending sort: equal scores (softmax often rounds many to exactly
            0) keep token order, lowest index first. Otherwise ``topk``, whose tie order is unspecified.

    Returns:
        [B, min(k, N), D].
    """
    scores = torch.softmax((tokens @ prior.unsqueeze(-1)).squeeze(-1), dim=1)  # [B, N]
    k = min(k, tokens.shape[1])
    if stable:
        idx = scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
    else:
        idx = scores.topk(k, dim=1).indices  # sorted: highest prior score first
    return tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class DualTowers(RetrievalModel):
    """Swin + BERT + ResNet towers, projections and temperatures shared by PIR and FISVL."""

    @classmethod
    def required_files(cls, cfg: ModelCfg, params: TowerParams) -> list[RequiredFile]:
        """Swin weights, the BERT folder (config.json + weights) and the ResNet weights (pretrained only)."""
        if not cfg.pretrained:
            return []
        p = params
        vision = [RequiredFile("model.params.vision_weights", p.vision_weights,
                               f"weights of timm vision backbone '{timm_name(p.vision_backbone)}'")] \
            if p.vision_backbone else swin_required_files(p.swin_weights)
        prior = [RequiredFile("model.params.prior_weights", p.prior_weights,
                              f"weights of timm prior backbone '{timm_name(p.prior_backbone)}'")] \
            if p.prior_backbone else resnet_required_files(p.resnet_weights, f"AID/ImageNet {p.resnet_arch} weights",
                                                           "model.params.resnet_weights")
        prior = [] if p.prior_backbone == "vision" else prior
        return vision + bert_required_files(p.bert_path) + prior

    def _build_towers(self, cfg: ModelCfg, p: TowerParams, ctx: ModelContext) -> None:
        if p.resnet_bn not in ("eval", "train"):
            raise ConfigError(f"model.params.resnet_bn must be eval or train, got '{p.resnet_bn}'")
        self.p, self.compat = p, cfg.upstream_compat
        if p.vision_backbone:
            self.vision_encoder = build_stage_backbone(p.vision_backbone, cfg.pretrained, p.vision_weights, "",
                                                       "model.params.vision_weights", p.swin_img_size)
            self.vision_encoder.num_features = stage_widths(self.vision_encoder)["f4"]
            self.vision_encoder.requires_grad_(p.finetune_vision)
        else:
            self.vision_encoder = build_swin(cfg.pretrained, p.swin_weights, p.swin_img_size, p.swin_embed_dim,
                                             p.swin_depths, p.swin_heads, p.swin_window, p.swin_drop_path)
        vocab = p.bert_vocab_size or ctx.vocab_size or BERT_BASE_VOCAB
        self.text_encoder = build_bert(cfg.pretrained, p.bert_path, vocab, p.bert_hidden, p.bert_layers,
                                       p.bert_heads, p.bert_intermediate, p.bert_max_positions)
        if p.bert_pad_grad or cfg.upstream_compat:
            # upstream's own BERT embedding has no padding_idx: the attended [PAD] row gets a gradient (the forward
            # is the same; transformers' padding_idx only zeroes that row's gradient)
            self.text_encoder.embeddings.word_embeddings.padding_idx = None
        self._frozen_text = lock_layers(self.text_encoder, p.bert_unlocked)
        rows = self.text_encoder.config.vocab_size
        if ctx.vocab_size > rows:
            raise ConfigError(f"the tokenizer has {ctx.vocab_size} ids but the BERT embedding has {rows} rows")
        self.shared_prior = p.prior_backbone == "vision"
        if self.shared_prior:
            if not p.vision_backbone or p.finetune_vision or p.finetune_resnet:
                raise ConfigError("model.params.prior_backbone=vision (the prior from the vision backbone) needs a "
                                  "timm model.params.vision_backbone with finetune_vision and finetune_resnet false")
            self.conv_encoder = self.vision_encoder  # one frozen network gives the tokens and the prior
        elif p.prior_backbone:
            self.conv_encoder = build_stage_backbone(p.prior_backbone, cfg.pretrained, p.prior_weights, "",
                                                     "model.params.prior_weights", p.swin_img_size)
        else:
            self.conv_encoder = build_resnet(p.resnet_arch, cfg.pretrained, p.resnet_weights,
                                             f"AID/ImageNet {p.resnet_arch} weights (model.params.resnet_weights)")
            self.conv_encoder.fc = nn.Identity()  # classifier unused (upstream drops it too)
        conv_width = stage_widths(self.conv_encoder)["f4"]
        if not p.finetune_resnet:
            self.conv_encoder.requires_grad_(False)
        d = cfg.embed_dim
        self.vision_proj = nn.Linear(self.vision_encoder.num_features, d)
        self.text_proj = nn.Linear(self.text_encoder.config.hidden_size, d)
        self.conv_proj = nn.Linear(conv_width, d)
        self.dropout_conv_proj = nn.Dropout(p.dropout)
        self.temp = nn.Parameter(torch.tensor(p.temp))
        self.temp2 = nn.Parameter(torch.tensor(p.temp2))

    def train(self, mode: bool = True) -> "DualTowers":
        super().train(mode)
        if not self.p.finetune_resnet and self.p.resnet_bn == "eval":
            self.conv_encoder.eval()  # frozen BatchNorm statistics must not drift (METHODS.md D10)
        if self.p.vision_backbone and not self.p.finetune_vision:
            self.vision_encoder.eval()
        for m in self._frozen_text:
            m.eval()  # locked BERT layers: no dropout
        return self

    def _resnet(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Prior stages (no graph when frozen). Returns ``stem`` [B, C_s, H/4, W/4] and ``gap`` [B, C]."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.p.finetune_resnet):
            f = stage_features(self.conv_encoder, images)
        return {"stem": f["stem"], "gap": f["f4"].mean(dim=(2, 3))}

    def _vision_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1 + N, C]: the averaged token then every last-stage token (Swin, or a timm backbone's f4 map)."""
        if not self.p.vision_backbone:
            return swin_tokens(self.vision_encoder, images)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.p.finetune_vision):
            x = stage_features(self.vision_encoder, images)["f4"].flatten(2).transpose(1, 2)
        return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)

    # the image parts a frozen timm vision backbone and a frozen prior give, cached per image (PIR: no stem)
    _PARTS = ("vis", "gap", "stem")

    def _prefix_parts(self) -> tuple[str, ...]:
        return self._PARTS

    def frozen_prefixes(self) -> dict[str, FrozenPrefix]:
        """A frozen timm vision backbone and a frozen prior (BatchNorm in eval mode): their maps per image."""
        p = self.p
        if not (p.vision_backbone and not p.finetune_vision and not p.finetune_resnet and p.resnet_bn == "eval"):
            return {}
        if getattr(self, "_prefix", None) is None:
            self._prefix = FrozenPrefix([self.vision_encoder, self.conv_encoder], self._part_rows,
                                        f"vision:{p.vision_backbone}|prior:{p.prior_backbone or p.resnet_arch}|"
                                        f"{','.join(self._prefix_parts())}")
        return {"image": self._prefix}

    def _parts(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """vis [B, C, h, w] (timm vision backbone), gap [B, C, 1, 1], stem [B, C, H/4, W/4] from the pixels."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.p.finetune_vision):
            f = stage_features(self.vision_encoder, images)
        res = {"stem": f["stem"], "gap": f["f4"].mean(dim=(2, 3))} if self.shared_prior else self._resnet(images)
        return {"vis": f["f4"], "gap": res["gap"][:, :, None, None], "stem": res["stem"]}

    def _part_rows(self, batch: Mapping[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            return pack_maps(self._parts(batch["images"]), self._prefix_parts())

    def _image_inputs(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(vision tokens [B, 1 + N, C], prior parts ``gap`` / ``stem``), from the feature cache when it holds
        every image of the batch."""
        prefix = self.frozen_prefixes().get("image")
        store = prefix.store if prefix is not None else None
        rows = store.get_alias(batch["filenames"]) if store is not None and "filenames" in batch else None
        if rows is None and not self.shared_prior:
            images = batch["images"]
            return self._vision_tokens(images), self._resnet(images)
        parts = unpack_maps(rows.to(self.temp.device), self._prefix_parts()) if rows is not None \
            else self._parts(batch["images"])
        x = parts["vis"].flatten(2).transpose(1, 2)
        prior = {"gap": parts["gap"].flatten(1)}
        if "stem" in parts:
            prior["stem"] = parts["stem"]
        return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1), prior

    def _text_tokens(self, batch: Mapping[str, Any], use_mask: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Projected BERT tokens [B, L, D] and the key mask [B, L] (None when padding is attended)."""
        tokens = batch["tokens"]
        mask = batch.get("attention_mask")
        if mask is None:
            mask = (tokens != 0).long()
        mask = mask.to(tokens.device) if use_mask else None
        feats = self.text_proj(bert_tokens(self.text_encoder, tokens, mask))
        return feats, (mask.bool() if mask is not None else None)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """``img_emb`` [B, D], ``txt_emb`` [B, D] (unit norm), ``temp`` and ``temp2`` (scalars)."""
        return {"img_emb": self.encode_image(batch), "txt_emb": self.encode_text(batch), "temp": self.temp,
                "temp2": self.temp2}

    def _convert_common(self, state: Mapping[str, torch.Tensor], skip: tuple[str, ...] = ()
                        ) -> tuple[dict[str, torch.Tensor], set[str]]:
        """Swin keys through the layout map; every other key whose name exists here is copied as is."""
        out, used = convert_swin_upstream(state, "vision_encoder.", "vision_encoder.")
        own = self.state_dict()
        for key, value in state.items():
            if key in used or key.startswith(skip):
                continue
            if key in own:
                out[key] = value
                used.add(key)
        return out, used


@MODELS.register("pir")
class PIR(DualTowers):
    """PIR: Swin + ResNet prior with VIR for images, BERT with LCA for text; cosine similarity."""

    Params = PIRParams

    def __init__(self, cfg: ModelCfg, params: PIRParams, ctx: ModelContext) -> None:
        super().__init__()
        self._build_towers(cfg, params, ctx)
        d, h, p = cfg.embed_dim, params.heads, params
        self.mapping_img = nn.ModuleList([nn.Linear(d, d) for _ in range(p.instru_num)])
        self.img_sa = nn.ModuleList([SABlock(d, h, p.dropout) for _ in range(p.instru_num)])
        self.img_ca = nn.ModuleList([CrossBlock(d, h, p.dropout) for _ in range(p.instru_num)])
        self.mapping_txt = nn.ModuleList([nn.Linear(d, d) for _ in range(p.cycle_num)])
        self.txt_sa = nn.ModuleList([SABlock(d, h, p.dropout) for _ in range(p.cycle_num)])
        self.txt_ca = nn.ModuleList([CrossBlock(d, h, p.dropout) for _ in range(p.cycle_num)])
        self.head_img = nn.Linear(d, d)
        self.head_txt = nn.Linear(d, d)
        self.dropout_head_img = nn.Dropout(p.dropout)
        self.dropout_head_txt = nn.Dropout(p.dropout)

    _PARTS = ("vis", "gap")  # VIR reads no stem

    def encode_image(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """VIR. Args: batch with ``images`` [B, 3, H, W]. Returns: [B, D] unit norm."""
        vis, prior = self._image_inputs(batch)
        tokens = self.vision_proj(vis)  # [B, 1+N, D]
        conv = self.dropout_conv_proj(self.conv_proj(prior["gap"]))  # [B, D]
        x = select_tokens(tokens, conv, self.p.filter_size, stable=self.compat)
        k = x.shape[1]
        for i in range(self.p.instru_num):
            x = self.img_sa[i](x)
            query = self.mapping_img[i](conv).unsqueeze(1).expand(-1, k, -1)
            x = self.img_ca[i](query, x)
        return F.normalize(tokens[:, 0] + self.dropout_head_img(self.head_img(x[:, 0])), dim=-1)

    def encode_text(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """LCA. Args: batch with ``tokens`` [B, L] (``attention_mask`` [B, L]). Returns: [B, D] unit norm."""
        use_mask = self.p.text_mask and not self.compat
        x, mask = self._text_tokens(batch, use_mask)
        cls = x[:, 0]
        for i in range(self.p.cycle_num):
            prev = x
            x = self.txt_sa[i](x, mask)
            x = self.txt_ca[i](self.mapping_txt[i](prev), x, mask)
        return F.normalize(cls + self.dropout_head_txt(self.head_txt(x[:, 0])), dim=-1)

    def convert_upstream(self, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
        """Map a PIR checkpoint (upstream_keys/pir.txt layout) to this model."""
        out, used = self._convert_common(state, skip=("conv_encoder.",))
        for key, value in state.items():
            parts = key.split(".", 2)
            if parts[0] == "conv_encoder" and len(parts) == 3 and parts[1] in _PIR_CONV:
                out[f"conv_encoder.{_PIR_CONV[parts[1]]}.{parts[2]}"] = value
                used.add(key)
        return out, used
