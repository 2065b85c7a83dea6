"""Retrieval pictures for test (or validation) queries of a trained model, for papers and debugging.

    python scripts/visualize.py --resume checkpoints/rsitmd_galr/fold0/best.pth --split test --n 8 --out DIR

Writes into ``DIR``:

* ``t2i_00.png ...``: a caption (title) and its top-``--topk`` images, ground truth framed in green; the title
  ends with the ground-truth rank.
* ``i2t_00.png ...``: an image and its top-``--topk`` captions, ground-truth captions in green.
* ``queries.json``: per picture the query, the retrieved items with scores and the ground-truth rank.
* with ``--sheet FILE``: also one PNG of all text->image grids stacked (tiles of ``--panel`` pixels, reduced to a
  256-colour palette so that it stays small enough for a README).

Queries are spread evenly over the split (``--seed`` draws them at random instead). Scores are the model's own
``similarity`` (what the metrics use). Exit code 2 with one line on bad input; every file is written through a
temporary name, so no half-written picture is left behind.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from data.images import read_image  # noqa: E402
from search.pictures import Panel, draw_caption_panel, draw_grid  # noqa: E402

log = logging.getLogger("rsitr.visualize")


class VisualizeError(ValueError):
    """Bad input (one line)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", required=True, help="trained checkpoint (best.pth)")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--n", type=int, default=8, help="pictures per direction")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=None, help="draw queries at random (default: evenly spread)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--panel", type=int, default=224, help="tile side of the text->image grids in pixels")
    p.add_argument("--sheet", default=None, help="also write every text->image grid stacked into this one PNG")
    args = p.parse_args(argv)
    if args.n < 1 or args.topk < 1 or args.panel < 16:
        p.error("--n and --topk must be >= 1, --panel >= 16")
    return args


def pick(count: int, n: int, seed: int | None) -> list[int]:
    """``n`` distinct indices of ``range(count)``: evenly spread, or random with ``seed``."""
    n = min(n, count)
    if seed is None:
        return sorted({int(round(x)) for x in np.linspace(0, count - 1, n)})
    return sorted(np.random.default_rng(seed).choice(count, size=n, replace=False).tolist())


def ranking(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score; ties keep file order (identical template captions tie exactly)."""
    return np.argsort(-scores, kind="stable")


def gt_rank(order: np.ndarray, gt: list[int]) -> int:
    """1-based position of the first ground-truth item in ``order`` (the ranking the picture shows)."""
    return int(np.flatnonzero(np.isin(order, gt))[0]) + 1


def split_scores(loaded: Any, split_name: str, device: torch.device) -> tuple[Any, np.ndarray]:
    """(split, sim [N_img, N_cap]) of the checkpoint's own data config."""
    from data.build import build_data, eval_loaders
    from engine.evaluate import compute_similarity, encode_split

    cfg, ckpt = loaded.cfg, loaded.ckpt
    splits = ("test",) if split_name == "test" else ("train", "val", "test")
    bundle = build_data(cfg.data, fold=int(ckpt.get("fold", 0)), tokenizer_state=ckpt["tokenizer"], splits=splits)
    split = getattr(bundle, split_name)
    if split is None:
        raise VisualizeError(f"the checkpoint's data config has no {split_name} split")
    img_loader, txt_loader = eval_loaders(split, bundle, cfg.data, cfg.eval.recipe)
    img, txt = encode_split(loaded.model, img_loader, txt_loader, device)
    return split, compute_similarity(loaded.model, img, txt, cfg.eval.sim_shard).cpu().numpy()


def _save(pic: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pic.save(tmp, format="PNG")
    tmp.replace(path)


def _open(path: Path) -> Image.Image | None:
    """The image as training decodes it (``data.images``), or None (drawn as a "missing" tile)."""
    return read_image(path)[0]


def stack_sheet(pictures: list[Image.Image], gap: int = 6, colours: int = 256) -> Image.Image:
    """Pictures one under the other (left-aligned, white gaps), as a palette image of at most ``colours`` colours."""
    if not pictures:
        raise VisualizeError("no picture to stack")
    width = max(p.width for p in pictures)
    sheet = Image.new("RGB", (width, sum(p.height for p in pictures) + gap * (len(pictures) - 1)), (255, 255, 255))
    y = 0
    for p in pictures:
        sheet.paste(p.convert("RGB"), (0, y))
        y += p.height + gap
    return sheet.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def text_to_image(split: Any, sim: np.ndarray, caps: list[int], k: int, out: Path, panel: int = 224,
                  pictures: list | None = None) -> list[dict]:
    """One grid per caption: its top-k images, ground truth framed (each picture also appended to ``pictures``)."""
    records = []
    for q, c in enumerate(caps):
        scores = sim[:, c]
        order = ranking(scores)
        top = order[:k].tolist()
        gt = split.txt2img[c]
        rank = gt_rank(order, [gt])
        panels = [Panel(_open(split.image_path(i)), f"#{r}  {scores[i]:.3f}\n{split.filenames[i]}", i == gt)
                  for r, i in enumerate(top, 1)]
        pic, _ = draw_grid(f"{split.captions[c]}   [ground truth at rank {rank}]", panels, cols=k, panel=panel)
        _save(pic, out / f"t2i_{q:02d}.png")
        if pictures is not None:
            pictures.append(pic)
        records.append({"file": f"t2i_{q:02d}.png", "caption": c, "query": split.captions[c], "gt_image": gt,
                        "gt_rank": rank, "top": [[split.filenames[i], float(scores[i])] for i in top]})
    return records


def image_to_text(split: Any, sim: np.ndarray, imgs: list[int], k: int, out: Path) -> list[dict]:
    """One panel per image: its top-k captions, ground-truth captions in green."""
    records = []
    for q, i in enumerate(imgs):
        scores = sim[i]
        order = ranking(scores)
        top = order[:k].tolist()
        gts = set(split.img2txt[i])
        rank = gt_rank(order, sorted(gts))
        rows = [(f"#{r}  {scores[c]:.3f}  {split.captions[c]}", c in gts) for r, c in enumerate(top, 1)]
        pic, _, _ = draw_caption_panel(_open(split.image_path(i)),
                                       f"{split.filenames[i]}   [first ground truth at rank {rank}]", rows)
        _save(pic, out / f"i2t_{q:02d}.png")
        records.append({"file": f"i2t_{q:02d}.png", "image": split.filenames[i], "gt_rank": rank,
                        "top": [[split.captions[c], float(scores[c]), c in gts] for c in top]})
    return records


def run(args: argparse.Namespace) -> int:
    from engine.inference import load_model_from_checkpoint  # heavy import after argument checks

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loaded = load_model_from_checkpoint(str(Path(args.resume).resolve()), device=str(device))
    loaded.model.to(device).eval()
    split, sim = split_scores(loaded, args.split, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    k = min(args.topk, sim.shape[0])
    grids: list[Image.Image] = []
    t2i = text_to_image(split, sim, pick(sim.shape[1], args.n, args.seed), k, out, args.panel, grids)
    i2t = image_to_text(split, sim, pick(sim.shape[0], args.n, args.seed), min(args.topk, sim.shape[1]), out)
    tmp = out / ".queries.json.tmp"
    tmp.write_text(json.dumps({"checkpoint": loaded.checkpoint_id, "split": args.split, "t2i": t2i, "i2t": i2t},
                              indent=1))
    tmp.replace(out / "queries.json")
    if args.sheet:
        sheet = Path(args.sheet)
        sheet.parent.mkdir(parents=True, exist_ok=True)
        _save(stack_sheet(grids), sheet)
        print(f"wrote {sheet} ({sheet.stat().st_size // 1024} KB)")
    hits = sum(r["gt_rank"] <= k for r in t2i)
    print(f"wrote {len(t2i)} text->image and {len(i2t)} image->text pictures to {out} "
          f"(ground truth in the top {k} for {hits}/{len(t2i)} captions)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        with torch.no_grad():
            return run(args)
    except (VisualizeError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
