"""BERT text tower through ``transformers``, from a local directory only (PIR / FISVL, METHODS.md C5, C6).

Pretrained: ``BertModel.from_pretrained(local_dir)`` on a directory holding ``config.json`` and the weights
(``model.safetensors`` or ``pytorch_model.bin``) of ``bert-base-uncased``; the same directory's ``vocab.txt`` is what
the data tokenizer reads (``data.tokenizer: bert``, ``data.tokenizer_path``). Random init: ``BertModel(BertConfig)``
with sizes from the method's params (BERT-base by default, tiny for tests). No pooler: the upstream model has none
and uses the token features (``[CLS]`` first).

Upstream (X-VLM lineage) calls the encoder without an attention mask, so padding tokens are attended
(METHODS.md E); :func:`bert_tokens` reproduces that when given ``attention_mask=None``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def build_bert(pretrained: bool, path: str = "", vocab_size: int = 30522, hidden: int = 768, layers: int = 12,
               heads: int = 12, intermediate: int = 3072, max_positions: int = 512) -> BertModel:
    """Build a pooler-free ``BertModel``.

    Args:
        pretrained: load ``path`` with ``from_pretrained``; False builds ``BertConfig(...)`` from the sizes below.
        path: local directory with ``config.json`` and ``model.safetensors`` / ``pytorch_model.bin``.
        vocab_size, hidden, layers, heads, intermediate, max_positions: random-init sizes (BERT-base defaults).
    """
    if not pretrained:
        cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=intermediate,
                         max_position_embeddings=max_positions)
        return BertModel(cfg, add_pooling_layer=False)
    d = Path(path) if path else None
    has_cfg = bool(d and (d / "config.json").is_file())
    has_weights = bool(d and any((d / f).is_file() for f in WEIGHT_FILES))
    if not (has_cfg and has_weights):
        raise FileNotFoundError(
            f"missing pretrained BERT directory contents: {path or '(model.params.bert_path not set)'} must hold "
            f"config.json (the model configuration), model.safetensors or pytorch_model.bin (the weights of "
            f"bert-base-uncased) and vocab.txt (the WordPiece vocabulary, read by the data tokenizer through "
            f"data.tokenizer_path); found config.json={has_cfg}, weights={has_weights}. "
            f"Or set model.pretrained=false for random init")
    return BertModel.from_pretrained(str(d), add_pooling_layer=False, local_files_only=True)


def bert_tokens(model: BertModel, tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Token features of the last layer.

    Args:
        model: a ``BertModel``.
        tokens: [B, L] WordPiece (or word) ids, 0-padded.
        attention_mask: [B, L] 1 on real tokens, or None to attend to padding too (upstream behaviour).

    Returns:
        [B, L, hidden].
    """
    return model(input_ids=tokens, attention_mask=attention_mask).last_hidden_state
