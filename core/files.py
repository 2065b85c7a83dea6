"""Files a run needs, declared up front and checked all at once.

Models (``RetrievalModel.required_files``) and tokenizers (``data.tokenize.tokenizer_required_files``) return a list
of :class:`RequiredFile`; the engine collects them for a config and calls :func:`check_required_files` before any
data is loaded, so a new user learns about every missing asset (tokenizer folder, Swin, BERT, ...) in one message
instead of one per run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from core.errors import MissingFileError


@dataclass(frozen=True)
class RequiredFile:
    """One file a config needs.

    Attributes:
        key: the config key that names it (``model.params.swin_weights``, ``data.tokenizer_path``).
        path: the file ("" when the key is not set).
        what: what the file is and where it comes from.
        alternatives: other files any one of which may stand in for ``path`` (``pytorch_model.bin`` for
            ``model.safetensors``).
    """

    key: str
    path: str
    what: str
    alternatives: tuple[str, ...] = ()

    def present(self) -> bool:
        """True when ``path`` or one of the alternatives is an existing file."""
        return any(p and Path(p).is_file() for p in (self.path, *self.alternatives))

    def describe(self) -> str:
        """``path (or alt) (key: what)``, or ``(key not set) (what)`` for an empty path."""
        if not self.path:
            return f"({self.key} not set) ({self.what})"
        alt = "".join(f" or {Path(a).name}" for a in self.alternatives)
        return f"{self.path}{alt} ({self.key}: {self.what})"


def missing_files(needs: Iterable[RequiredFile]) -> list[RequiredFile]:
    """The entries of ``needs`` whose file is absent, in order, without repeats."""
    out: list[RequiredFile] = []
    for need in needs:
        if not need.present() and need not in out:
            out.append(need)
    return out


def missing_message(missing: list[RequiredFile], title: str = "missing file", hint: str = "") -> str:
    """One line: ``<title>: a (key: what); b (key: what)[; hint]`` (``title`` gets an ``s`` for several)."""
    head = title + ("s" if len(missing) > 1 else "")
    return f"{head}: " + "; ".join(m.describe() for m in missing) + (f"; {hint}" if hint else "")


def check_required_files(needs: Iterable[RequiredFile], title: str = "missing file", hint: str = "") -> None:
    """Raise one :class:`MissingFileError` naming every absent file of ``needs`` (nothing when all exist).

    Args:
        needs: the declared files.
        title: start of the message (``missing pretrained file``; pluralised for several).
        hint: what to do, appended after the list.
    """
    missing = missing_files(needs)
    if missing:
        raise MissingFileError(missing_message(missing, title, hint))
