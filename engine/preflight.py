"""Before a run touches its data: every file the config needs, checked at once (issue 14.7).

The model declares its files (``RetrievalModel.required_files``, collected by ``models.registry.model_required_files``),
the tokenizer its own (``data.tokenize.tokenizer_required_files`` / ``state_required_files``); this module adds the
data side files named by keys and raises one :class:`core.errors.MissingFileError` that lists every missing file with
the config key that names it and what to do.
"""
from __future__ import annotations

from dataclasses import replace

from core.config import Config
from core.files import RequiredFile, check_required_files, missing_files
from data.tokenize import state_required_files, tokenizer_required_files
from models.registry import model_required_files


def run_required_files(cfg: Config, tokenizer_state: dict | None = None) -> list[RequiredFile]:
    """Every file a run of ``cfg`` reads besides the dataset folder itself.

    Args:
        cfg: the run's config.
        tokenizer_state: the saved tokenizer of a checkpoint (resume / test.py). Its weights come from the checkpoint,
            so the model then reads no pretrained file and no ``model.init_from``.
    """
    mcfg = replace(cfg.model, pretrained=False, init_from="") if tokenizer_state is not None else cfg.model
    needs = model_required_files(mcfg, cfg.source)
    needs += state_required_files(tokenizer_state) if tokenizer_state is not None else tokenizer_required_files(cfg.data)
    if cfg.data.cap_weight_file:
        needs.append(RequiredFile("data.cap_weight_file", cfg.data.cap_weight_file, "per-caption loss weights JSON"))
    return needs


def missing_files_hint(cfg: Config, missing: list[RequiredFile], rebuilding: bool = False) -> str:
    """What to do: fix the paths, or (for pretrained assets) run with random init and, then, which tokenizer."""
    hint = "put the files there or point the named keys at them"
    model_missing = any(m.key.startswith("model.") for m in missing)
    bert_tok_missing = cfg.data.tokenizer == "bert" and any(m.key == "data.tokenizer_path" for m in missing)
    if rebuilding:
        return hint + " (a checkpoint's BERT tokenizer is read from the folder it was trained with)"
    if model_missing and cfg.model.pretrained:
        rand = "model.pretrained=false" + (" and data.tokenizer=vocab" if bert_tok_missing else "")
        return f"{hint}; or run with random init: {rand} (reads no pretrained file)"
    if bert_tok_missing and not cfg.model.pretrained:
        return (f"{hint}; a random-init run needs no BERT vocabulary: set data.tokenizer=vocab (a word vocabulary "
                "built from the training captions)")
    return hint


def check_run_files(cfg: Config, tokenizer_state: dict | None = None) -> None:
    """Raise one MissingFileError naming every missing file of :func:`run_required_files` (nothing is read)."""
    needs = run_required_files(cfg, tokenizer_state)
    missing = missing_files(needs)
    if missing:
        where = f"{cfg.source}: " if cfg.source else ""
        check_required_files(missing, f"{where}missing file",
                             missing_files_hint(cfg, missing, tokenizer_state is not None))
