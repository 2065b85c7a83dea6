"""Search an image index (scripts/build_index.py) with a sentence or an image.

    python scripts/search.py --index INDEX_DIR "a bridge over a river between green fields" --topk 10 [--grid out.png]
    python scripts/search.py --index INDEX_DIR --image query.tif [--captions captions.txt] [--grid out.png]

Prints one line per result: rank, score, path. Text queries are encoded with the index's checkpoint (recorded in
its ``meta.json``; ``--resume`` points elsewhere if the file moved, its identity must still match). Scores are
cosine similarities; a method whose similarity is not the cosine (``similarity`` overridden, e.g. AMFMN's gated
text) is re-scored with the model's own ``similarity`` over a FAISS shortlist of ``--shortlist`` images.
``--image`` finds the most similar images of the index (cosine of image embeddings) and, with ``--captions`` (one
caption per line), also ranks those captions for the image. ``--grid`` draws the top results with the query as
title. Exit code 2 with one line on bad input.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import logging  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from search.index import ImageIndex, IndexFolderError, load_index  # noqa: E402
from search.pictures import Panel, draw_grid  # noqa: E402

log = logging.getLogger("rsitr.search")


class SearchError(ValueError):
    """Bad input (one line)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="index folder written by scripts/build_index.py")
    p.add_argument("query", nargs="?", help="text query")
    p.add_argument("--image", help="image query (searches similar images; with --captions also captions)")
    p.add_argument("--captions", help="with --image: text file, one caption per line, to rank for the image")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--grid", help="write a PNG of the top results with the query as title")
    p.add_argument("--cols", type=int, default=5, help="tiles per row of --grid")
    p.add_argument("--panel", type=int, default=224, help="tile side of --grid in pixels")
    p.add_argument("--resume", help="checkpoint (default: the one recorded in the index)")
    p.add_argument("--shortlist", type=int, default=200, help="candidates re-scored for non-cosine methods")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    args = p.parse_args(argv)
    if (args.query is None) == (args.image is None):
        p.error("give either a text query or --image")
    if args.captions and not args.image:
        p.error("--captions goes with --image")
    if args.topk < 1:
        p.error("--topk must be >= 1")
    return args


def load_model(index: ImageIndex, resume: str | None, device: str) -> Any:
    """The index's model; its identity must match the one the index was built with."""
    from engine.inference import load_model_from_checkpoint  # heavy import after argument checks

    path = str(Path(resume).resolve()) if resume else index.meta.get("checkpoint_path")
    if not path:
        raise SearchError(f"{index.root}: meta.json names no checkpoint; pass --resume")
    loaded = load_model_from_checkpoint(path, device=device)
    if loaded.checkpoint_id != index.meta["checkpoint_id"]:
        raise SearchError(f"checkpoint {path} ({loaded.checkpoint_id}) is not the one the index was built with "
                          f"({index.meta['checkpoint_id']}); rebuild the index")
    loaded.model.to(device).eval()
    return loaded


def custom_similarity(model: torch.nn.Module) -> bool:
    """True when the method scores pairs with its own ``similarity`` (not the base-class cosine)."""
    from models.base import RetrievalModel

    return type(model).similarity is not RetrievalModel.similarity


@torch.no_grad()
def encode_texts(loaded: Any, texts: list[str], device: str) -> torch.Tensor:
    """Text embeddings. Returns: [M, D]."""
    batch = loaded.tokenizer.collate([loaded.tokenizer.encode(t) for t in texts])
    return loaded.model.encode_text({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})


@torch.no_grad()
def encode_image_file(loaded: Any, path: str, device: str) -> torch.Tensor:
    """Embedding of one image file. Returns: [1, D]."""
    try:
        with Image.open(path) as img:
            x = loaded.transform(img.convert("RGB"))[None]
    except (OSError, UnidentifiedImageError) as e:
        raise SearchError(f"cannot read image {path}: {e}") from None
    return loaded.model.encode_image({"images": x.to(device), "filenames": [Path(path).name]})


@torch.no_grad()
def search_text(loaded: Any, index: ImageIndex, txt: torch.Tensor, k: int, shortlist: int) -> tuple[list, list]:
    """Top-k images for one text embedding [1, D]. Returns: (scores, row ids), best first."""
    if not custom_similarity(loaded.model):
        scores, ids = index.search(txt.float().cpu().numpy(), k)
        return scores[0].tolist(), ids[0].tolist()
    _, cand = index.search(txt.float().cpu().numpy(), max(k, shortlist))
    cand = cand[0][cand[0] >= 0]
    img = torch.from_numpy(index.embeddings[cand]).to(txt.device)
    sim = loaded.model.similarity(img, txt).float()[:, 0].cpu().numpy()  # [n_cand]
    order = np.argsort(-sim, kind="stable")[:k]
    return sim[order].tolist(), cand[order].tolist()


def print_results(title: str, rows: list[tuple[float, str]]) -> None:
    print(title)
    for r, (score, what) in enumerate(rows, 1):
        print(f"{r:3d}  {score:.4f}  {what}")


def save_grid(path: str, title: str, index: ImageIndex, scores: list, ids: list, cols: int, panel: int) -> None:
    """Draw the results (query as title) and write the PNG atomically."""
    panels = []
    for r, (s, i) in enumerate(zip(scores, ids), 1):
        try:
            with Image.open(index.path(i)) as img:
                pic = img.convert("RGB")
        except (OSError, UnidentifiedImageError):
            pic = None  # moved or unreadable since indexing: a grey "missing" tile
        panels.append(Panel(pic, f"#{r}  {s:.3f}\n{Path(index.files[i]).name}"))
    grid, _ = draw_grid(title, panels, cols=cols, panel=panel)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    grid.save(tmp, format="PNG")
    tmp.replace(out)
    print(f"grid: {out}")


def run(args: argparse.Namespace) -> int:
    index = load_index(args.index)
    loaded = load_model(index, args.resume, args.device)
    if args.query is not None:
        txt = encode_texts(loaded, [args.query], args.device)
        scores, ids = search_text(loaded, index, txt, args.topk, args.shortlist)
        title = args.query
    else:
        img = encode_image_file(loaded, args.image, args.device)
        s, i = index.search(img.float().cpu().numpy(), args.topk)
        scores, ids, title = s[0].tolist(), i[0].tolist(), f"images like {Path(args.image).name}"
    print_results(title, [(s, str(index.path(i))) for s, i in zip(scores, ids)])
    if args.captions:
        caps = [c.strip() for c in Path(args.captions).read_text().splitlines() if c.strip()]
        if not caps:
            raise SearchError(f"no captions in {args.captions}")
        sim = loaded.model.similarity(img, encode_texts(loaded, caps, args.device)).float()[0].cpu().numpy()
        order = np.argsort(-sim, kind="stable")[:args.topk]
        print_results(f"captions for {Path(args.image).name}", [(float(sim[j]), caps[j]) for j in order])
    if args.grid:
        save_grid(args.grid, title, index, scores, ids, args.cols, args.panel)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return run(args)
    except (SearchError, IndexFolderError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
