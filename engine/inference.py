"""Load a trained rsitr checkpoint for inference (search, pictures, notebooks): model + tokenizer + transform.

Images reach the model through training's reader (``data.images``), so a 16-bit or float raster is served exactly as it
was trained on."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from data.images import decode_rgb, load_image
from data.tokenize import Tokenizer, tokenizer_from_state
from data.transforms import build_transform
from engine.checkpoint import load_checkpoint
from core.config import Config
from engine.preflight import check_run_files
from engine.runner import config_for_rebuild, resolve_device
from models.base import ModelContext, RetrievalModel
from models.registry import build_model


@dataclass
class Loaded:
    """A model ready to encode, with what is needed to feed it.

    Attributes:
        model: the RetrievalModel in eval mode on its device.
        cfg: the checkpoint's config (pretrained loading off).
        tokenizer: the training tokenizer (``encode`` / ``collate``).
        transform: the evaluation image transform (PIL image -> [3, S, S]).
        checkpoint_id: path, hash of the file's first MiB and epoch: identifies the weights an index was built with.
        ckpt: the raw checkpoint dict.
        device: where the model lives.
    """

    model: RetrievalModel
    cfg: Config
    tokenizer: Tokenizer
    transform: Callable[[Any], torch.Tensor]
    checkpoint_id: str
    ckpt: dict
    device: torch.device

    @torch.no_grad()
    def encode_texts(self, captions: list[str]) -> torch.Tensor:
        """[len(captions), D] caption embeddings."""
        batch = self.tokenizer.collate([self.tokenizer.encode(c) for c in captions])
        return self.model.encode_text({k: v.to(self.device) for k, v in batch.items()}).float()

    @torch.no_grad()
    def encode_images(self, images: list[Any], filenames: list[str] | None = None) -> torch.Tensor:
        """[len(images), D] embeddings of PIL images, made 8-bit RGB by training's reader (``data.images``: deep
        one-band images scaled by their range, not clipped by ``convert("RGB")``)."""
        x = torch.stack([self.transform(decode_rgb(im)) for im in images]).to(self.device)
        names = filenames or [f"image_{i}.png" for i in range(len(images))]
        return self.model.encode_image({"images": x, "filenames": names}).float()

    def encode_files(self, paths: list[str | Path]) -> torch.Tensor:
        """[len(paths), D] embeddings of image files, decoded as training decodes them (``data.images.load_image``).

        Raises:
            DataError: a file that cannot be read (one line naming it).
        """
        return self.encode_images([load_image(p) for p in paths], [Path(p).name for p in paths])


def checkpoint_identity(path: str | Path, epoch: int) -> str:
    """``<path>@sha256(first MiB)[:16]#epoch<k>``."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read(1 << 20)).hexdigest()[:16]
    return f"{Path(path).resolve()}@{digest}#epoch{epoch}"


def load_model_from_checkpoint(path: str | Path, device: str = "cpu") -> Loaded:
    """Rebuild the model of an rsitr checkpoint from its stored config and weights (no pretrained file is read)."""
    ckpt = load_checkpoint(path)
    cfg = config_for_rebuild(ckpt)
    check_run_files(cfg, ckpt["tokenizer"])  # the saved tokenizer's folder (BERT), before anything is built
    tokenizer = tokenizer_from_state(ckpt["tokenizer"])
    ctx = ModelContext(vocab_words=list(tokenizer.words) if tokenizer.words else None, vocab_size=len(tokenizer),
                       scene_names=list(ckpt.get("scene_names", [])))
    dev = resolve_device(device)
    model = build_model(cfg.model, ctx, cfg.source).to(dev)
    model.load_state_dict(ckpt["model"])
    model.load_extra_state(ckpt.get("extra", {}))
    model.eval()
    transform = build_transform(cfg.data.transform, False, cfg.data.image_size)
    return Loaded(model, cfg, tokenizer, transform, checkpoint_identity(path, ckpt["epoch"]), ckpt, dev)
