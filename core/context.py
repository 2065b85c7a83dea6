"""The contract type between the data side and the models: what a model needs to know about its data.

``data.build.model_context`` fills it from a built dataset; every method's constructor receives it. It lives in the
foundation so that ``data/`` and ``models/`` both import it from below (``models.base.ModelContext`` is the same
class, re-exported).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelContext:
    """What a model needs to know about the data it is built for.

    Attributes:
        vocab_words: for word-level tokenizers, the words ordered by id (id ``i`` is ``vocab_words[i - 1]``;
            id 0 is padding). None for sub-word tokenizers.
        vocab_size: number of token ids including padding (embedding table rows).
        scene_names: scene label of each scene id (``noneclass`` for images without a scene).
        extra: free-form extras (e.g. ``tag_words`` for KAMCL).
    """

    vocab_words: list[str] | None = None
    vocab_size: int = 0
    scene_names: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
