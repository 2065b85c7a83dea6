"""Search an image index (scripts/build_index.py) with a sentence or an image.

    python scripts/search.py --index INDEX_DIR "a bridge over a river between green fields" --topk 10 [--grid out.png]
    python scripts/search.py --index INDEX_DIR --image query.tif [--captions captions.txt] [--grid out.png]

Prints one line per result: rank, score, path. Text queries are encoded with the index's checkpoint (recorded in
its ``meta.json``; ``--resume`` points elsewhere if the file moved, its identity must still match). Scores are
cosine similarities; a method whose similarity is not the cosine (``similarity`` overridden, e.g. AMFMN's gated
text) is re-scored with the model's own ``similarity`` over a FAISS shortlist of ``--shortlist`` images.
``--image`` finds the most similar images of the index (cosine of image embeddings) and, with ``--captions`` (one
caption per line), also ranks those captions for the image. ``--grid`` draws the top results with the query as
title. Exit code 2 with one line on bad input. The ranking lives in ``search/query.py``, shared with the web app of
``scripts/serve.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import logging  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from data.images import read_image  # noqa: E402
from search.index import ImageIndex, IndexFolderError, load_index  # noqa: E402
from search.pictures import Panel, draw_grid  # noqa: E402
from search.query import (QueryError, encode_image, encode_texts, load_model, open_image,  # noqa: E402
                          rank_captions, search_text)

log = logging.getLogger("rsitr.search")


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


def encode_image_file(loaded: Any, path: str, device: str) -> torch.Tensor:
    """Embedding of one image file. Returns: [1, D]."""
    return encode_image(loaded, open_image(path, path), Path(path).name, device)


def print_results(title: str, rows: list[tuple[float, str]]) -> None:
    print(title)
    for r, (score, what) in enumerate(rows, 1):
        print(f"{r:3d}  {score:.4f}  {what}")


def save_grid(path: str, title: str, index: ImageIndex, scores: list, ids: list, cols: int, panel: int) -> None:
    """Draw the results (query as title) and write the PNG atomically."""
    panels = []
    for r, (s, i) in enumerate(zip(scores, ids), 1):
        pic, _ = read_image(index.path(i))  # training's reader: the pixels the model saw
        # (None: moved or unreadable since indexing, drawn as a grey "missing" tile)
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
            raise QueryError(f"no captions in {args.captions}")
        scores_c, ids_c = rank_captions(loaded, img, encode_texts(loaded, caps, args.device), args.topk)
        print_results(f"captions for {Path(args.image).name}", [(s, caps[j]) for s, j in zip(scores_c, ids_c)])
    if args.grid:
        save_grid(args.grid, title, index, scores, ids, args.cols, args.panel)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return run(args)
    except (QueryError, IndexFolderError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
