"""``swan``: SWAN, the scene-aware aggregation network (METHODS.md C3).

Paper: J. Pan, Q. Ma, C. Bai, "Reducing Semantic Confusion: Scene-aware Aggregation Network for Remote
Sensing Cross-modal Retrieval", ICMR 2023. Upstream: https://github.com/kinshingpoon/SWAN-pytorch (read for facts;
this is rsitr's own code).

Image: ResNet-50 (frozen by default) -> VMSF over layer2..4 (global ``vg``) and SFGS over the stem (local ``vl``,
models/encoders/sfgs.py); ``img = fc_2(ReLU(fc_1([vl; vg])))``. Text: word embedding (GloVe-initialised) ->
dropout 0.4 -> BiGRU (directions averaged) -> TCGE: gated attention (GA) + BN residual, joint-word 1-D convs, MLP
residual, the token at position ``len - 1``, L2-normalised. Score: cosine. Loss (config): the C0 triplet, sum form.

Files a user provides (``model.pretrained: true``):

* ``model.params.backbone_weights``: ``pretrained/aid_28-rsp-resnet-50-ckpt.pth`` (the AID-pretrained RSP ResNet-50;
  weights under ``model``, 30-class fc that is dropped) or torchvision's ImageNet ``pretrained/resnet50-19c8e357.pth``.
* ``model.params.glove_path``: ``pretrained/glove.840B.300d.txt`` (GloVe 840B, 300-d, text format); ``""`` leaves the
  word embedding at random init.

Where rsitr differs from upstream (each a flag):

* Gated attention: upstream floor-divides the scaled scores (``torch.div(..., rounding_mode='floor')``), which also
  kills their gradient. rsitr divides normally; ``model.upstream_compat: true`` restores the floor.
* Upstream's SFGS attention is called with its arguments in a different order (softmax(K Vᵀ)·Q); rsitr uses the
  textbook order and ``upstream_compat`` restores the upstream one (METHODS.md E).
* GA attends to padded positions upstream, so a caption's embedding depends on the longest caption of its batch.
  rsitr masks them (``ga_mask_pad: true``); ``upstream_compat`` turns the mask off.
* The vocabulary size comes from the data (upstream hard-codes 8590 rows); an upstream checkpoint's extra rows are
  cut when it is loaded. The frozen backbone's BatchNorm is kept in eval mode (``backbone_bn: eval``); upstream
  leaves it in train mode so its statistics drift (``backbone_bn: train``, D10).
* ``backbone`` (default "": the ResNet of ``arch``) may name any timm model (:mod:`models.encoders.multiscale`;
  VMSF and SFGS are built for its stage widths, ``stem`` is its stride-4 map), weights from ``backbone_weights``
  (local file or ``pkg:``). A frozen backbone with BatchNorm in eval mode is a feature-cache prefix. Not upstream.
* Not kept: upstream's unused text ``projection`` layer and the backbone's classifier ``fc`` (neither reaches an
  embedding); :meth:`SWAN.convert_upstream` consumes and drops them.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from core.config import ModelCfg
from core.errors import ConfigError
from core.files import RequiredFile
from models.base import FrozenPrefix, ModelContext, RetrievalModel
from models.encoders.cnn import resnet_required_files
from models.encoders.multiscale import (build_stage_backbone, is_resnet_name, pack_maps, set_bn_eval, stage_features,
                                        stage_widths, timm_name, unpack_maps)
from models.encoders.glove import glove_required_files, init_embedding_from_glove
from models.encoders.sfgs import FC, SFGS, convert_sfgs_upstream
from models.registry import MODELS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SWANParams:
    arch: str = "resnet50"  # torchvision ResNet (resnet18/34 for tiny tests)
    backbone: str = ""  # "" = the ResNet of ``arch``; else any timm model name (multi-scale stages, no adapters)
    backbone_weights: str = "pretrained/aid_28-rsp-resnet-50-ckpt.pth"  # AID (RSP) or ImageNet ResNet weights
    glove_path: str = "pretrained/glove.840B.300d.txt"  # GloVe text file; "" = random word embeddings
    finetune_backbone: bool = False  # paper: frozen; set true for random-init runs
    backbone_bn: str = "eval"  # eval: backbone BN statistics frozen in training | train: they update (upstream)
    word_dim: int = 300  # word embedding size (GloVe 300)
    text_dropout: float = 0.4  # dropout on word embeddings
    ga_heads: int = 2  # gated-attention heads
    ga_mask_pad: bool = True  # mask padded words in GA (off under upstream_compat)
    vmsf_dropout: float = 0.2  # dropout in the VMSF channel filter
    sfgs_mid: int = 32  # SFGS filter width (4 * mid tokens)
    sfgs_grid: int = 16  # SFGS pooled map side (grid**2 values per token)
    sfgs_heads: int = 8  # WSA heads
    sfgs_dropout: float = 0.1  # dropout in SFGS


class MLP(nn.Module):
    """FC (Linear, ReLU, dropout) then Linear (upstream ``MLP``; names ``fc.linear`` / ``linear``)."""

    def __init__(self, cin: int, mid: int, cout: int, dropout: float) -> None:
        super().__init__()
        self.fc = FC(cin, mid, dropout)
        self.linear = nn.Linear(mid, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [..., cin]. Returns: [..., cout]."""
        return self.linear(self.fc(x))


class VMSF(nn.Module):
    """Vision multi-scale fusion: 1x1 convs on layer2/3/4, resized to layer3's grid, fused, pooled, filtered.

    Args:
        chans: channels of layer2, layer3, layer4 (512, 1024, 2048 for ResNet-50).
        dim: embedding size D.
        dropout: dropout in the channel filter.
    """

    def __init__(self, chans: tuple[int, int, int], dim: int, dropout: float) -> None:
        super().__init__()
        self.conv_d1 = nn.Conv2d(chans[0], dim, 1)
        self.conv_d2 = nn.Conv2d(chans[1], dim, 1)
        self.conv_d3 = nn.Conv2d(chans[2], 2 * dim, 1)
        self.channel_att = nn.Sequential(nn.Conv2d(4 * dim, dim, 1, bias=False), nn.BatchNorm2d(dim),
                                         nn.ReLU(inplace=True))
        self.channel_filter = MLP(dim, 2 * dim, dim, dropout)

    def forward(self, d1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor) -> torch.Tensor:
        """Args: layer2 [B, c1, 2h, 2w], layer3 [B, c2, h, w], layer4 [B, c3, h/2, w/2]. Returns: vg [B, D]."""
        low = F.interpolate(self.conv_d1(d1), scale_factor=0.5, mode="nearest")
        high = F.interpolate(self.conv_d3(d3), scale_factor=2.0, mode="nearest")
        fused = self.channel_att(torch.cat([low, self.conv_d2(d2), high], dim=1))
        return self.channel_filter(fused.mean(dim=(2, 3)))


class GatedAttention(nn.Module):
    """GA: multi-head self-attention whose queries and keys are modulated by sigmoid gates.

    Args:
        dim: width D; heads: number of heads (d_k = D / heads).
        floor_div: floor-divide the scaled scores (upstream quirk).
    """

    def __init__(self, dim: int, heads: int, floor_div: bool) -> None:
        super().__init__()
        self.h, self.dk, self.floor_div = heads, dim // heads, floor_div
        self.linears = nn.ModuleList([nn.Linear(dim, dim) for _ in range(3)])
        self.fc_q = nn.Linear(self.dk, self.dk)
        self.fc_k = nn.Linear(self.dk, self.dk)
        self.fc_g = nn.Linear(self.dk, 2 * self.dk)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        """Args: x [B, L, D]; pad [B, L] bool (True = padding, masked as keys) or None. Returns: [B, L, D]."""
        b = x.shape[0]
        q, k, v = (lin(x).view(b, -1, self.h, self.dk).transpose(1, 2) for lin in self.linears)
        gate = torch.sigmoid(self.fc_g(self.fc_q(q) * self.fc_k(k)))  # [B, h, L, 2 d_k]
        q, k = q * gate[..., :self.dk], k * gate[..., self.dk:]
        scores = q @ k.transpose(-2, -1)
        scores = torch.div(scores, math.sqrt(self.dk), rounding_mode="floor") if self.floor_div \
            else scores / math.sqrt(self.dk)
        if pad is not None:
            scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        out = scores.softmax(dim=-1) @ v
        return out.transpose(1, 2).reshape(b, -1, self.h * self.dk)


class TCGE(nn.Module):
    """Text coarse-grained enhancement: GA residual, joint-word convs, MLP residual, token ``len - 1``.

    Args:
        dim: width D; heads: GA heads; floor_div: GA quirk; mask_pad: mask padded words in GA.
    """

    def __init__(self, dim: int, heads: int, floor_div: bool, mask_pad: bool) -> None:
        super().__init__()
        self.mask_pad = mask_pad
        self.bn_1d = nn.BatchNorm1d(dim)
        self.ga = GatedAttention(dim, heads, floor_div)
        self.dropout = nn.Dropout(0.2)
        self.mlp = MLP(dim, 2 * dim, dim, 0.1)
        self.conv1d_block_22 = nn.Sequential(nn.Conv1d(dim, dim, 2, stride=2), nn.BatchNorm1d(dim),
                                             nn.ReLU(inplace=True))
        self.conv1d_block_33 = nn.Sequential(nn.Conv1d(dim, dim, 3, stride=3), nn.BatchNorm1d(dim),
                                             nn.ReLU(inplace=True))

    def forward(self, c: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Args: c per-word features [B, L, D] (L = longest caption); lengths [B]. Returns: [B, D], unit norm."""
        b, L, d = c.shape
        pad = torch.arange(L, device=c.device)[None, :] >= lengths.to(c.device)[:, None] if self.mask_pad else None
        ga = c + self.dropout(self.bn_1d(self.ga(c, pad).reshape(b * L, d)).view(b, L, d))
        # joint words (2- and 3-grams). Upstream reads the output at index len-1, inside the GA part, so these tokens
        # never reach the embedding; they are kept for checkpoint compatibility. Zero-pad so that L >= 3 works.
        ct = F.pad(c.transpose(1, 2), (0, max(0, 3 - L)))
        jw = [blk(ct).transpose(1, 2) for blk in (self.conv1d_block_22, self.conv1d_block_33)]
        x = torch.cat([ga, *jw], dim=1)
        x = self.mlp(x) + x
        idx = (lengths.to(c.device) - 1).view(-1, 1, 1).expand(-1, 1, d)
        return F.normalize(x.gather(1, idx).squeeze(1), dim=-1, eps=1e-8)


class BiGRUText(nn.Module):
    """Word embedding, dropout, bidirectional GRU with the two directions averaged.

    Args:
        vocab_size: embedding rows (ids 0..V, 0 = padding); word_dim; dim: GRU hidden = D; dropout.
    """

    def __init__(self, vocab_size: int, word_dim: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)  # N(0, 1) init as upstream; GloVe overwrites found words
        self.rnn = nn.GRU(word_dim, dim, 1, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Args: tokens [B, L]; lengths [B] (>= 1). Returns: per-word features [B, max(lengths), D]."""
        x = self.dropout(self.embed(tokens))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True)
        return out.view(out.shape[0], out.shape[1], 2, -1).mean(dim=2)


@MODELS.register("swan")
class SWAN(RetrievalModel):
    """SWAN dual encoder (cosine similarity)."""

    Params = SWANParams

    @classmethod
    def required_files(cls, cfg: ModelCfg, params: SWANParams) -> list[RequiredFile]:
        """Backbone weights and, when ``glove_path`` is set, the GloVe file (pretrained only)."""
        if not cfg.pretrained:
            return []
        if params.backbone:
            needs = [RequiredFile("model.params.backbone_weights", params.backbone_weights,
                                  f"weights of timm backbone '{timm_name(params.backbone)}'")]
        else:
            needs = resnet_required_files(params.backbone_weights, f"{params.arch} weights, the AID RSP checkpoint "
                                          "aid_28-rsp-resnet-50-ckpt.pth or torchvision's resnet50-19c8e357.pth",
                                          "model.params.backbone_weights")
        return needs + glove_required_files(params.glove_path)

    def __init__(self, cfg: ModelCfg, params: SWANParams, ctx: ModelContext) -> None:
        super().__init__()
        if ctx.vocab_size <= 1 or ctx.vocab_words is None:
            raise ConfigError("swan needs a word vocabulary (data.tokenizer: vocab)")
        if params.backbone_bn not in ("eval", "train"):
            raise ConfigError(f"model.params.backbone_bn must be 'eval' or 'train', got '{params.backbone_bn}'")
        if not cfg.pretrained and not params.finetune_backbone:
            log.warning("swan: random-init backbone kept frozen (finetune_backbone: false); image features are noise")
        self.p, dim, compat = params, cfg.embed_dim, cfg.upstream_compat
        if params.backbone and is_resnet_name(params.backbone):
            raise ConfigError(f"model.params.backbone: '{params.backbone}' is a torchvision ResNet; set "
                              "model.params.arch for it and leave backbone '' (backbone is for timm models)")
        self.backbone = build_stage_backbone(params.backbone or params.arch, cfg.pretrained, params.backbone_weights,
                                             f"{params.arch} weights (model.params.backbone_weights)",
                                             "model.params.backbone_weights")
        if not params.backbone:
            self.backbone.fc = nn.Identity()  # the classifier never reaches an embedding
        w = stage_widths(self.backbone)  # ResNet-50: stem 64, f2..f4 512 / 1024 / 2048
        self.vmsf = VMSF((w["f2"], w["f3"], w["f4"]), dim, params.vmsf_dropout)
        self.sfgs = SFGS(w["stem"], dim, params.sfgs_mid, params.sfgs_grid, params.sfgs_dropout, params.sfgs_heads,
                         upstream_attn_order=compat)
        self.agg = nn.Module()
        self.agg.fc_1, self.agg.fc_2 = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)
        self.text = BiGRUText(ctx.vocab_size, params.word_dim, dim, params.text_dropout)
        self.tcge = TCGE(dim, params.ga_heads, floor_div=compat, mask_pad=params.ga_mask_pad and not compat)
        if cfg.pretrained and params.glove_path:
            init_embedding_from_glove(self.text.embed.weight.data, ctx.vocab_words, params.glove_path)
        self.backbone.requires_grad_(params.finetune_backbone)
        self._prefixes = {} if params.finetune_backbone or params.backbone_bn != "eval" else {
            "image": FrozenPrefix([self.backbone], self._stage_rows,
                                  f"stages:{params.backbone or params.arch}:{','.join(self._MAPS)}")}

    _MAPS = ("stem", "f2", "f3", "f4")

    def train(self, mode: bool = True) -> "SWAN":
        super().train(mode)
        if self.p.backbone_bn == "eval":
            set_bn_eval(self.backbone)
        return self

    def frozen_prefixes(self) -> dict[str, FrozenPrefix]:
        """A frozen backbone with BatchNorm in eval mode (the paper's setting): its stem, f2, f3, f4 per image."""
        return self._prefixes

    def _stages(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.p.finetune_backbone):
            return stage_features(self.backbone, images)

    def _stage_rows(self, batch: Mapping[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            return pack_maps(self._stages(batch["images"]), self._MAPS)

    def encode_image(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Args: batch["images"] [N, 3, H, W]. Returns: image embeddings [N, D] (not normalised, as upstream)."""
        store = self._prefixes["image"].store if self._prefixes else None
        rows = store.get_alias(batch["filenames"]) if store is not None and "filenames" in batch else None
        if rows is not None:
            f = unpack_maps(rows.to(self.agg.fc_1.weight.device), self._MAPS)
        else:
            f = self._stages(batch["images"])
        vl = self.sfgs(f["stem"])
        vg = self.vmsf(f["f2"], f["f3"], f["f4"])
        return self.agg.fc_2(torch.relu(self.agg.fc_1(torch.cat([vl, vg], dim=1))))

    def encode_text(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Args: batch["tokens"] [M, L], batch["lengths"] [M]. Returns: unit-norm caption embeddings [M, D]."""
        lengths = batch["lengths"].clamp(min=1)
        tokens = batch["tokens"][:, :int(lengths.max())]
        return self.tcge(self.text(tokens, lengths), lengths)

    def convert_upstream(self, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
        """Map a SWAN-pytorch state dict (``upstream_keys/swan.txt``) to this model."""
        out, used = convert_sfgs_upstream(state, "image_encoder.conv_filter.", "sfgs.", "sfgs.")
        renames = {"image_encoder.resnet.": "backbone.", "image_encoder.vmsf.": "vmsf.", "agg.": "agg.",
                   "text_encoder.rnn.": "text.rnn.", "tcge.": "tcge."}
        vmsf = {"conv_512.": "conv_d1.", "conv_1024.": "conv_d2.", "conv_2048.": "conv_d3."}
        dropped = ("image_encoder.resnet.fc.", "text_encoder.projection.")
        for key, value in state.items():
            if key in used:
                continue
            if key.startswith(dropped):
                used.add(key)  # consumed on purpose: neither reaches an embedding (see the module docstring)
                continue
            if key == "text_encoder.embed.weight":
                out["text.embed.weight"] = value[:self.text.embed.num_embeddings]  # upstream pads to 8590 rows
                used.add(key)
                continue
            for src, dst in renames.items():
                if key.startswith(src):
                    rest = key[len(src):]
                    if src == "image_encoder.vmsf.":
                        rest = next((rest.replace(a, b, 1) for a, b in vmsf.items() if rest.startswith(a)), rest)
                    out[dst + rest] = value
                    used.add(key)
                    break
        return out, used
