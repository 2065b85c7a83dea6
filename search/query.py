"""The one search path over an index folder: load the index and its model once, encode a query once, rank.

Used by ``scripts/search.py`` (command line) and ``search/app.py`` (the web app of ``scripts/serve.py``), so both
rank with the same code:

* text -> images: cosine top-k from the FAISS index; a method that declares ``pairwise_similarity`` (its
  ``similarity`` is not the cosine, e.g. AMFMN's gated text; see ``models.base.RetrievalModel``) is re-scored with
  the model's own ``similarity`` over a FAISS shortlist (:func:`search_text`);
* image -> images: cosine of image embeddings (an uploaded image is encoded once; "more like this" on a result of
  the index reuses its stored embedding and encodes nothing);
* image -> captions: the model's ``similarity`` against caption embeddings encoded once (:meth:`Searcher.captions`).

Bad queries raise :class:`QueryError` with a one-line message meant for the user.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from data.images import BAD_IMAGE, PixelError, decode_rgb
from engine.inference import Loaded, load_model_from_checkpoint
from search.index import ImageIndex, load_index

MAX_QUERY_CHARS = 1000
MAX_PIXELS = 64_000_000  # an uploaded image larger than this is refused before decoding (decompression bombs)


class QueryError(ValueError):
    """A bad query or bad input (one-line message for the user); ``status`` is the HTTP status it maps to."""

    status = 400


class NotAnImage(QueryError):
    """Input that PIL cannot decode as an image."""

    status = 415


class ImageTooLarge(QueryError):
    """An image with more pixels than ``MAX_PIXELS``."""

    status = 413


@dataclass
class Hit:
    """One ranked result: row of the index, score, file path relative to the images root."""

    row: int
    score: float
    file: str


def load_model(index: ImageIndex, resume: str | None, device: str) -> Loaded:
    """The index's model; its identity must match the one the index was built with."""
    path = str(Path(resume).resolve()) if resume else index.meta.get("checkpoint_path")
    if not path:
        raise QueryError(f"{index.root}: meta.json names no checkpoint; pass --resume")
    loaded = load_model_from_checkpoint(path, device=device)
    if loaded.checkpoint_id != index.meta["checkpoint_id"]:
        raise QueryError(f"checkpoint {path} ({loaded.checkpoint_id}) is not the one the index was built with "
                         f"({index.meta['checkpoint_id']}); rebuild the index")
    loaded.model.to(device).eval()
    return loaded


@torch.no_grad()
def encode_texts(loaded: Any, texts: list[str], device: str | torch.device) -> torch.Tensor:
    """Text embeddings. Returns: [M, D]."""
    batch = loaded.tokenizer.collate([loaded.tokenizer.encode(t) for t in texts])
    return loaded.model.encode_text({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})


def open_image(source: Any, name: str) -> Image.Image:
    """Decode an image (path or binary file object) to 8-bit RGB with training's reader (``data.images.decode_rgb``:
    16-bit and float one-band rasters scaled by their range, 16-bit RGB refused), so a query is encoded from the
    pixels the model was trained on.

    Raises:
        NotAnImage: not an image PIL can read, or pixels the reader refuses (the reason is given).
        ImageTooLarge: more than ``MAX_PIXELS`` pixels.
    """
    try:
        with Image.open(source) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageTooLarge(f"{name}: {img.width}x{img.height} pixels is too large "
                                 f"(at most {MAX_PIXELS // 1_000_000} megapixels)")
            return decode_rgb(img)
    except QueryError:
        raise
    except PixelError as e:
        raise NotAnImage(f"{name} cannot be used: {e}") from None
    except (*BAD_IMAGE, UnidentifiedImageError):
        raise NotAnImage(f"{name} is not a readable image (.tif, .png or .jpg expected)") from None


@torch.no_grad()
def encode_image(loaded: Any, img: Image.Image, name: str, device: str | torch.device) -> torch.Tensor:
    """Embedding of one RGB image. Returns: [1, D]."""
    x = loaded.transform(img)[None]
    return loaded.model.encode_image({"images": x.to(device), "filenames": [name]})


@torch.no_grad()
def search_text(loaded: Any, index: ImageIndex, txt: torch.Tensor, k: int, shortlist: int) -> tuple[list, list]:
    """Top-k images for one text embedding [1, D]. Returns: (scores, row ids), best first.

    The FAISS cosine ranking, unless the model declares ``pairwise_similarity``: then its ``similarity`` re-scores
    the ``shortlist`` best cosine candidates.
    """
    if not loaded.model.pairwise_similarity:
        scores, ids = index.search(txt.float().cpu().numpy(), k)
        return scores[0].tolist(), ids[0].tolist()
    _, cand = index.search(txt.float().cpu().numpy(), max(k, shortlist))
    cand = cand[0][cand[0] >= 0]
    img = torch.from_numpy(index.embeddings[cand]).to(txt.device)
    sim = loaded.model.similarity(img, txt).float()[:, 0].cpu().numpy()  # [n_cand]
    order = np.argsort(-sim, kind="stable")[:k]
    return sim[order].tolist(), cand[order].tolist()


@torch.no_grad()
def rank_captions(loaded: Any, img: torch.Tensor, caps: torch.Tensor, k: int) -> tuple[list, list]:
    """Top-k captions for one image embedding [1, D] among caption embeddings [M, D]. Returns: (scores, ids)."""
    sim = loaded.model.similarity(img.to(caps.device), caps).float()[0].cpu().numpy()  # [M]
    order = np.argsort(-sim, kind="stable")[:k]
    return sim[order].tolist(), order.tolist()


def check_text(query: str | None) -> str:
    """The stripped query, or QueryError for an empty / overlong / word-less one."""
    q = (query or "").strip()
    if not q:
        raise QueryError("empty query: type a sentence describing the images you look for")
    if len(q) > MAX_QUERY_CHARS:
        raise QueryError(f"query too long ({len(q)} characters, at most {MAX_QUERY_CHARS})")
    if not re.search(r"\w", q):
        raise QueryError("the query has no words: type a sentence describing the images you look for")
    return q


class Searcher:
    """An index with its model, loaded once; every query is encoded once.

    Queries are serialised by a lock: the model runs one query at a time with all of torch's threads (parallel
    queries on a few cores only compete for them), and a model is not promised to be thread-safe.
    """

    def __init__(self, index: ImageIndex, loaded: Any, shortlist: int = 200, captions: list[str] | None = None):
        self.index, self.loaded, self.shortlist = index, loaded, shortlist
        self.device = getattr(loaded, "device", "cpu")
        self.rows = {f: i for i, f in enumerate(index.files)}
        self.lock = threading.Lock()
        self.caption_texts = list(captions or [])
        self.caption_emb = None
        if self.caption_texts:
            with torch.no_grad():  # encoded once, in batches
                self.caption_emb = torch.cat([encode_texts(loaded, self.caption_texts[i:i + 256], self.device)
                                              for i in range(0, len(self.caption_texts), 256)])

    @classmethod
    def open(cls, index_dir: str | Path, resume: str | None = None, device: str = "cpu", shortlist: int = 200,
             captions: list[str] | None = None) -> "Searcher":
        """Load the index folder and the checkpoint it was built with."""
        index = load_index(index_dir)
        return cls(index, load_model(index, resume, device), shortlist, captions)

    def _hits(self, scores: list, ids: list) -> list[Hit]:
        return [Hit(int(i), float(s), self.index.files[i]) for s, i in zip(scores, ids) if i >= 0]

    def text(self, query: str, k: int) -> list[Hit]:
        """Top-k images for a sentence."""
        q = check_text(query)
        with self.lock:
            txt = encode_texts(self.loaded, [q], self.device)
            return self._hits(*search_text(self.loaded, self.index, txt, k, self.shortlist))

    def embed_image(self, img: Image.Image, name: str) -> torch.Tensor:
        """Embedding [1, D] of an RGB image (see :func:`open_image`)."""
        with self.lock:
            return encode_image(self.loaded, img, name, self.device)

    def stored(self, row: int) -> torch.Tensor:
        """The index's own embedding [1, D] of row ``row`` (nothing is encoded)."""
        if not 0 <= row < len(self.index.files):
            raise QueryError(f"no image {row} in the index (it has {len(self.index.files)})")
        return torch.from_numpy(self.index.embeddings[row:row + 1]).to(self.device)

    def similar(self, emb: torch.Tensor, k: int) -> list[Hit]:
        """Top-k images by cosine to an image embedding [1, D]."""
        with self.lock:
            scores, ids = self.index.search(emb.float().cpu().numpy(), k)
        return self._hits(scores[0].tolist(), ids[0].tolist())

    def captions(self, emb: torch.Tensor, k: int) -> list[tuple[float, str]]:
        """Top-k of the captions given at construction for an image embedding [1, D] (empty without captions)."""
        if self.caption_emb is None:
            return []
        with self.lock:
            scores, ids = rank_captions(self.loaded, emb, self.caption_emb, k)
        return [(s, self.caption_texts[j]) for s, j in zip(scores, ids)]

    def facts(self) -> dict:
        """What the page shows about the index: model, checkpoint, number of images, index kind."""
        meta = self.index.meta
        cfg = getattr(self.loaded, "cfg", None)
        return {"model": cfg.model.name if cfg is not None else meta.get("method", "?"),
                "method": meta.get("method", "?"), "checkpoint": meta.get("checkpoint_path", "?"),
                "checkpoint_id": meta.get("checkpoint_id", "?"), "images": int(meta["n"]), "kind": meta["kind"],
                "dim": int(meta["dim"]), "params": meta.get("params", {}), "captions": len(self.caption_texts)}
