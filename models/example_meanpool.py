"""``example_meanpool``: the worked example of docs/ADDING_A_METHOD.md, kept in the code base and tested like a method.

A timm image tower (any timm model, pooled features, a linear projection) and a text tower that averages the word
embeddings of a caption's real tokens (masked mean over ``attention_mask``, then dropout and a linear projection);
cosine similarity. It pairs with the ``example_am_softmax`` loss (losses/example_am_softmax.py). Not a published
remote-sensing method: a small, readable dual encoder that shows every contract a method meets (``Params``,
``required_files``, the ``encode_image`` / ``encode_text`` batch keys, ``model.pretrained: false`` reading nothing).

Pretrained files, read only when ``model.pretrained`` is true: ``backbone_weights`` (a local timm/torchvision state
dict for the image tower, which must fill 90 % of it, models/encoders/pretrained.py) and, when set, ``glove_path``
(GloVe vectors for the rows of the word embedding, models/encoders/glove.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import timm
import torch
import torch.nn.functional as F
from torch import nn

from core.config import ModelCfg
from core.errors import ConfigError
from core.files import RequiredFile
from models.base import ModelContext, RetrievalModel
from models.encoders.glove import glove_required_files, init_embedding_from_glove
from models.encoders.pretrained import load_matching, read_state
from models.registry import MODELS

WEIGHTS_KEY = "model.params.backbone_weights"


@dataclass(frozen=True)
class ExampleMeanPoolParams:
    """``model.params`` of example_meanpool: every key typed and defaulted; any other key is a ConfigError."""

    backbone: str = "resnet18"  # any timm model name ("test_resnet": timm's tiny test network)
    backbone_weights: str = ""  # local weights of that timm model, read when model.pretrained
    word_dim: int = 300  # word embedding size (300 to take GloVe vectors)
    glove_path: str = ""  # GloVe text file for the word embedding, read when model.pretrained; "" = random init
    dropout: float = 0.1  # on the pooled caption feature, in training


class MeanPoolText(nn.Module):
    """Word embedding averaged over the real tokens of each caption.

    Args:
        vocab_size: embedding rows including padding id 0 (``ModelContext.vocab_size``).
        word_dim: embedding size.
    """

    def __init__(self, vocab_size: int, word_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        nn.init.normal_(self.embed.weight, std=0.1)
        with torch.no_grad():
            self.embed.weight[0].zero_()

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """tokens [M, L], attention_mask [M, L] (1 on real tokens) -> [M, word_dim]."""
        mask = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
        return (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0)


@MODELS.register("example_meanpool")
class ExampleMeanPool(RetrievalModel):
    """timm CNN + mean-pooled word embeddings; cosine similarity (the base class's)."""

    Params = ExampleMeanPoolParams

    @classmethod
    def required_files(cls, cfg: ModelCfg, params: ExampleMeanPoolParams) -> list[RequiredFile]:
        """The image tower's weights and the GloVe file, both only when ``model.pretrained``."""
        if not cfg.pretrained:
            return []
        return [RequiredFile(WEIGHTS_KEY, params.backbone_weights,
                             f"ImageNet weights of timm model '{params.backbone}'")] + glove_required_files(
            params.glove_path)

    def __init__(self, cfg: ModelCfg, params: ExampleMeanPoolParams, ctx: ModelContext) -> None:
        super().__init__()
        if ctx.vocab_size <= 1:
            raise ConfigError("example_meanpool needs a tokenizer vocabulary (data.tokenizer)")
        if cfg.pretrained and params.glove_path and not ctx.vocab_words:
            raise ConfigError("example_meanpool: model.params.glove_path needs a word vocabulary "
                              "(data.tokenizer: vocab)")
        self.backbone = timm.create_model(params.backbone, pretrained=False, num_classes=0)
        if cfg.pretrained:
            state = read_state(params.backbone_weights, WEIGHTS_KEY)
            load_matching(self.backbone, state, params.backbone_weights,
                          f"the image backbone (timm '{params.backbone}')", WEIGHTS_KEY)
        self.img_proj = nn.Linear(self.backbone.num_features, cfg.embed_dim)
        self.text = MeanPoolText(ctx.vocab_size, params.word_dim)
        if cfg.pretrained and params.glove_path:
            init_embedding_from_glove(self.text.embed.weight, ctx.vocab_words, params.glove_path)
        self.txt_proj = nn.Sequential(nn.Dropout(params.dropout), nn.Linear(params.word_dim, cfg.embed_dim))

    def encode_image(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """images [N, 3, H, W] -> [N, embed_dim], L2-normalised."""
        return F.normalize(self.img_proj(self.backbone(batch["images"])), dim=-1)

    def encode_text(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """tokens [M, L] and attention_mask [M, L] -> [M, embed_dim], L2-normalised."""
        return F.normalize(self.txt_proj(self.text(batch["tokens"], batch["attention_mask"])), dim=-1)
