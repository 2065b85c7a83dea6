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
        train_images: file names of the images the run trains on (the fold's training split), or None when the
            model is built without training data (test.py, export); KAMCL ranks its tags over them.
        train_captions: the captions of each of ``train_images`` (same order), or None with it; KAMCL builds its
            tags from them when it is given no tag file.
        extra: free-form extras.
    """

    vocab_words: list[str] | None = None
    vocab_size: int = 0
    scene_names: list[str] = field(default_factory=list)
    train_images: list[str] | None = None
    train_captions: list[list[str]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
