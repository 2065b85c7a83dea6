"""The one retrieval-model contract every rsitr method follows.

A method is a :class:`RetrievalModel` subclass registered in ``models/registry.py``. The engine only ever calls:

* ``encode_image(batch) -> [N, D]``: ``batch`` is the image part of a loader batch, a dict with ``images``
  (float ``[N, 3, H, W]``) and ``filenames`` (list of N names; methods with per-image side inputs, such as GaLR's
  local matrices, look them up by filename).
* ``encode_text(batch) -> [M, D]``: ``batch`` holds ``tokens`` (long ``[M, L]``, 0-padded for word vocabularies),
  ``lengths`` (long ``[M]``) and ``attention_mask`` (long ``[M, L]``).
* ``similarity(img_emb, txt_emb) -> [N, M]``: cosine by default. A method whose score is pairwise (AMFMN's
  gated text) overrides it and declares ``pairwise_similarity = True``; the evaluator then calls it on shards of at
  most ``eval.sim_shard`` columns.
* ``forward(batch) -> dict``: training outputs. At least ``img_emb`` [B, D] and ``txt_emb`` [B, D]; methods add
  whatever their losses read (``logit_scale``, ``concept_img``, ...). Losses live in ``losses/``, never here.

Published checkpoints: ``convert_upstream(state)`` maps a state dict in the upstream repository's key layout to
this model's keys (see :func:`models.registry.load_upstream`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from core.files import RequiredFile
from core.context import ModelContext  # noqa: F401  (the data -> model contract type; importable from here)


@dataclass(frozen=True)
class NoParams:
    """A method without ``model.params``."""


@dataclass
class FrozenPrefix:
    """The locked leading part of one tower, whose output ``engine/feature_cache.py`` may compute once per input.

    Attributes:
        modules: the modules the output depends on (their weights' sha256 is part of the store's fingerprint).
        encode: ``batch -> [N, ...]``: the prefix on an image batch (``images``) or a caption batch (``tokens``,
            ``lengths``, ``attention_mask``), under ``no_grad``.
        spec: what else defines the computation (architecture, split point, pooling), for the fingerprint.
        store: the :class:`core.feature_store.FeatureStore` the engine attached (None: computed per batch).
    """

    modules: list
    encode: Callable[[Mapping[str, Any]], torch.Tensor]
    spec: str
    store: Any = field(default=None, repr=False)


class RetrievalModel(nn.Module):
    """Base class of every method.

    Subclasses set ``Params`` (a dataclass validated from ``model.params``) and implement ``encode_image`` and
    ``encode_text``; they override ``similarity`` only when the score is not the cosine of the embeddings, and
    then declare ``pairwise_similarity = True``.

    Declared contracts (class attributes the engine reads; never probed):
        zero_shot: the method is evaluated as built and never trained (``train.epochs`` is forced to 0, and
            ``test.py --config`` may evaluate it without a checkpoint).
        pairwise_similarity: ``similarity`` is not the cosine of the two embeddings (e.g. AMFMN's gated text);
            the evaluator then calls it on blocks of at most 128 x ``eval.sim_shard``, the search app re-scores
            a shortlist with it. False: one matmul of the normalised embeddings is the score.
        ddp_broadcast_buffers: DDP copies rank 0's buffers to every rank before each forward (torch's default).
            A method that keeps its own buffers equal on every rank (KAMCL's queues, filled with all-gathered
            keys) sets False, so nothing overwrites them.
    """

    Params: ClassVar[type] = NoParams
    zero_shot: ClassVar[bool] = False
    pairwise_similarity: ClassVar[bool] = False
    ddp_broadcast_buffers: ClassVar[bool] = True

    def encode_image(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Embed images. Args: batch with ``images`` [N, 3, H, W]. Returns: [N, D]."""
        raise NotImplementedError

    def encode_text(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Embed captions. Args: batch with ``tokens`` [M, L], ``lengths`` [M]. Returns: [M, D]."""
        raise NotImplementedError

    def similarity(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """Score every image against every caption. Args: [N, D], [M, D]. Returns: [N, M] (cosine)."""
        return F.normalize(img_emb.float(), dim=-1) @ F.normalize(txt_emb.float(), dim=-1).t()

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Training outputs: ``img_emb`` [B, D] and ``txt_emb`` [B, D] (plus method-specific entries)."""
        return {"img_emb": self.encode_image(batch), "txt_emb": self.encode_text(batch)}

    def convert_upstream(self, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
        """Map an upstream-layout state dict to this model's keys.

        Returns:
            (converted, used): ``converted`` maps this model's parameter/buffer names to tensors; ``used`` is the
            set of upstream keys that went into it. Keys not in ``used`` are reported as unplaced.
        """
        raise NotImplementedError(f"{type(self).__name__} has no upstream checkpoint mapping")

    @classmethod
    def required_files(cls, cfg: Any, params: Any) -> list[RequiredFile]:
        """Every file this method reads when built from ``cfg`` (``ModelCfg``) and its parsed ``params``.

        Checked all at once, before any data is loaded (``models.registry.model_required_files``). With
        ``cfg.pretrained`` false a method must need no pretrained file. Default: none.
        """
        return []

    def frozen_prefixes(self) -> dict[str, FrozenPrefix]:
        """``{"image": ..., "text": ...}``: the towers whose leading part is locked (LiT-style), for the feature
        cache. Only a model that reads ``prefix.store`` in its encoders may return any. Default: none."""
        return {}

    def on_train_step_start(self) -> None:
        """Hook called before every optimisation step (momentum encoders update here)."""

    def extra_state(self) -> dict[str, Any]:
        """Non-parameter training state to keep in checkpoints (buffers are saved with the weights already)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""
