"""Per-caption loss weights read from a file (``data.cap_weight_file``), delivered as ``batch["cap_weight"]``.

FISVL weighted its contrastive loss with a per-caption ``length`` value from a JSON file that was never published
(METHODS.md C6, D9); rsitr's default is a rule on caption length inside the loss (losses/fisvl.py). A user who has
such a file sets ``data.cap_weight_file`` and the loss's ``weight_source: batch``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from core.errors import DataError


def load_caption_weights(path: str | Path, captions: Sequence[str]) -> list[float]:
    """Per-caption weights from a JSON file, for the data side's ``cap_weight``.

    Accepted files: a list of numbers (one per caption, in split order), a mapping caption -> weight, or
    FISVL-style records ``[{"caption": ..., "length": weight}, ...]``. Captions missing from a mapping get 1.0.
    """
    data = json.loads(Path(path).read_text())
    if isinstance(data, list) and all(isinstance(x, (int, float)) for x in data):
        if len(data) != len(captions):
            raise DataError(f"{path}: {len(data)} weights for {len(captions)} captions")
        return [float(x) for x in data]
    if isinstance(data, list):
        data = {r["caption"]: r["length"] for r in data}
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a list of weights, a caption -> weight mapping or FISVL records")
    return [float(data.get(c, 1.0)) for c in captions]
