"""rsitr data: ``*_precomp`` splits, tokenizers, transforms, fold protocols, the demo set and the loaders.

Entry point: :func:`data.build.build_data` -> :class:`data.build.DataBundle`, then ``train_loader`` /
``eval_loaders`` / ``model_context``. Heavy optional libraries (transformers, open_clip) are imported only when
their tokenizer is used.
"""
from data.presets import DATASETS

__all__ = ["DATASETS"]
