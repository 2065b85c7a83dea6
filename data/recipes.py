"""Named evaluation recipes (``eval.recipe``): the evaluation code of the CLIP-family anchors, rule for rule.

The published zero-shot numbers of RemoteCLIP and GeoRSCLIP come from their own evaluation scripts, not from a
common protocol. A recipe fixes what those scripts do to the test split, so released weights evaluated with rsitr
meet the published numbers:

* ``remoteclip`` (ChenDelong1999/RemoteCLIP ``retrieval.py``): captions ``raw.capitalize()`` (first letter upper,
  the rest lower, Python's ``str.capitalize``); open_clip's default validation transform at 224 px: resize of the
  short side to 224 (bicubic), centre crop 224, CLIP mean/std; fp32.
* ``georsclip`` (om-ai-lab/RS5M ``inference_tool.py``): captions as they are; ``Resize(224, bicubic)`` +
  ``CenterCrop(224)``, CLIP mean/std; fp32.

Both score with the cosine of the L2-normalised embeddings, count a recall@k hit when any ground-truth item is in
the top k (clip_benchmark's ``recall_at_k``), take ground truth by index (an identical caption of another image is
no hit) and report mR as the mean of the six recalls: rsitr's metrics already (engine/metrics.py). Both evaluate the
official test split (the images and captions of ``test_caps.txt`` / ``test_filename.txt``), grouped per image as
rsitr's precomp files are. Both build the model with ``open_clip.create_model_and_transforms(arch,
pretrained='openai')`` and load the released state dict into it: the QuickGELU OpenAI architecture, which is
``clip_zeroshot``'s default ``quick_gelu: true`` (models/encoders/clip.py).

What a recipe cannot fix: the order of exactly tied scores. Upstream takes ``torch.topk``'s order, which torch
leaves unspecified; rsitr breaks ties by its documented rule (engine/metrics.py). Exact ties come from identical
caption strings of different images (their embeddings are equal), so i2t recalls can differ slightly from the
published ones where a test set repeats captions across images.

A recipe applies to every evaluation of the run (validation and test), to the image and caption loaders only: the
model and its training pipeline (``data.transform``) are untouched. Its precision is checked with the config
(``eval.amp: off``, CLIP ``model.params.precision: fp32``, and ``data.tokenizer: clip``; core/config.py). Note that
open_clip's tokenizer lower-cases every caption, so the capitalisation does not change a single token id there; it
is kept because the recipe is RemoteCLIP's, and it matters for any case-sensitive tokenizer.

Check the published zero-shot numbers with the released weights (tests/data/test_recipes.py runs this command)::

    python test.py --config configs/rsitmd_clip_zeroshot.yaml --set model.params.weights=pretrained/RemoteCLIP-ViT-B-32.pt --set eval.recipe=remoteclip
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from core.errors import ConfigError


def _as_is(caption: str) -> str:
    return caption


@dataclass(frozen=True)
class EvalRecipe:
    """One evaluation recipe.

    Attributes:
        name: the ``eval.recipe`` value.
        caption: applied to every caption before tokenisation.
        transform: the registered eval pipeline (data/transforms.py) the images go through.
        image_size: its output side.
        source: where the rules were read.
    """

    name: str
    caption: Callable[[str], str]
    transform: str
    image_size: int
    source: str


RECIPES: dict[str, EvalRecipe] = {
    "remoteclip": EvalRecipe("remoteclip", str.capitalize, "clip", 224,
                             "ChenDelong1999/RemoteCLIP retrieval.py (open_clip's validation transform)"),
    "georsclip": EvalRecipe("georsclip", _as_is, "clip", 224, "om-ai-lab/RS5M inference_tool.py"),
}


def get_recipe(name: str) -> EvalRecipe | None:
    """The recipe called ``name``; None for ``""`` / ``none`` (the run's own ``data.transform`` and captions)."""
    if name in ("", "none"):
        return None
    if name not in RECIPES:
        raise ConfigError(f"eval.recipe must be one of none, {', '.join(RECIPES)}, got '{name}'")
    return RECIPES[name]
