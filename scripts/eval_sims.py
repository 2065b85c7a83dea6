"""Evaluate a saved similarity matrix (images x captions), optionally after a rerank.

    python scripts/eval_sims.py --sims S.npy [--captions-per-image 5 | --img2txt map.json]
        [--rerank none|galr|galr_unweighted] [--k 30 --wp1 0.3 --wp2 1.1]
        [--json out.json] [--save-reranked out.npz] [--tune]

``--sims``: a ``.npy`` file, or a ``.npz`` holding one array or an array named ``sims``; rows are images, columns
captions. Caption j belongs to image ``j // captions-per-image`` unless ``--img2txt`` gives a JSON list whose entry
i lists the caption (column) indices of image i; every column must be listed exactly once.
``--json`` writes the metrics (METHODS.md A5: ``i2t_R1 i2t_R5 i2t_R10 t2i_R1 t2i_R5 t2i_R10 mR rsum i2t_medR
t2i_medR i2t_meanR t2i_meanR``); ``--save-reranked`` writes the two reranked matrices as arrays ``i2t`` and ``t2i``.
``--tune`` runs the (k, wp1, wp2) grid of engine.rerank.tune_rerank on this matrix and prints the best setting;
it does not change the evaluation below it (tune on a validation matrix, then pass the values for the test one).
Bad input (missing or unreadable file, wrong shape, a map that does not cover the columns, NaN/inf) prints one
line naming the file and exits with code 2 before anything is written; the folders of ``--json`` and
``--save-reranked`` are created (or refused) before the matrix is read. The metrics and the rerank run on numpy
alone (engine/metrics_np.py, engine/rerank.py): this script never imports torch, so it starts as fast as numpy does.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

# the engine is imported inside the functions that use it, so --help and bad input answer at once
RERANK_NAMES = ("galr", "galr_unweighted", "none")  # the keys of engine.rerank.RERANKERS (a test checks)
KEYS = ["i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "mR", "rsum",
        "i2t_medR", "t2i_medR", "i2t_meanR", "t2i_meanR"]


class InputError(Exception):
    """Bad user input; the message is printed as one line."""


def load_sims(path: str) -> np.ndarray:
    """The [N_img, N_cap] matrix of a .npy / .npz file (float64 is kept, anything else becomes float32)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                if "sims" in data.files:
                    arr = data["sims"]
                elif len(data.files) == 1:
                    arr = data[data.files[0]]
                else:
                    raise InputError(f"{path}: .npz holds {data.files}; expected one array or one named 'sims'")
        else:
            arr = data
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001  (any unreadable file is the same user error)
        raise InputError(f"{path}: cannot read as .npy/.npz ({type(e).__name__}: {e})".replace("\n", " ")) from e
    if arr.ndim != 2 or min(arr.shape) == 0:
        raise InputError(f"{path}: expected a 2-D images x captions matrix, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{path}: expected real numbers, got dtype {arr.dtype}")
    arr = arr if arr.dtype == np.float64 else arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise InputError(f"{path}: {int(bad.sum())} NaN/inf value(s) in sims (first at row {r}, column {c})")
    return arr


def build_txt2img(args: argparse.Namespace, n_img: int, n_cap: int) -> np.ndarray:
    """Caption -> image map from --img2txt, else from --captions-per-image; raises InputError naming the file."""
    from engine.metrics_np import txt2img_from_counts, txt2img_from_img2txt

    if args.img2txt:
        path = args.img2txt
        try:
            with open(path, encoding="utf-8") as f:
                lists = json.load(f)
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: cannot read JSON ({type(e).__name__}: {e})".replace("\n", " ")) from e
        if not isinstance(lists, list) or not all(isinstance(x, list) and all(isinstance(c, int) for c in x)
                                                  for x in lists):
            raise InputError(f"{path}: expected a JSON list of lists of caption indices")
        if len(lists) != n_img:
            raise InputError(f"{path}: lists {len(lists)} images but {args.sims} has {n_img} rows")
        try:
            return txt2img_from_img2txt(lists, n_captions=n_cap)
        except ValueError as e:
            raise InputError(f"{path}: does not cover the {n_cap} columns of {args.sims}: {e}") from e
    cpi = args.captions_per_image
    if cpi < 1 or n_cap != cpi * n_img:
        raise InputError(f"{args.sims}: {n_cap} captions (columns) is not {cpi} x {n_img} images (rows); "
                         f"pass --captions-per-image or --img2txt")
    return txt2img_from_counts([cpi] * n_img)


def check_output(path: str | None, flag: str) -> None:
    """Create the folders of an output file before any work; raise InputError when that is impossible."""
    if path:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"{flag} {path}: cannot create its folder ({e.strerror or type(e).__name__})") from None
        if Path(path).is_dir() or not os.access(Path(path).parent, os.W_OK):
            raise InputError(f"{flag} {path}: not a writable file path")


def format_table(m: dict[str, float], title: str) -> str:
    """A small fixed-width table of the metrics."""
    lines = [title, f"{'':6}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'medR':>8}{'meanR':>9}"]
    for d in ("i2t", "t2i"):
        lines.append(f"{d:6}{m[d + '_R1']:8.2f}{m[d + '_R5']:8.2f}{m[d + '_R10']:8.2f}"
                     f"{m[d + '_medR']:8.0f}{m[d + '_meanR']:9.2f}")
    lines.append(f"mR {m['mR']:.2f}   rsum {m['rsum']:.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sims", required=True, help="S.npy or S.npz (images x captions)")
    p.add_argument("--captions-per-image", type=int, default=5)
    p.add_argument("--img2txt", default=None, help="JSON list: entry i = caption indices of image i")
    p.add_argument("--rerank", choices=RERANK_NAMES, default="none")
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--wp1", type=float, default=0.3)
    p.add_argument("--wp2", type=float, default=1.1)
    p.add_argument("--json", default=None, help="write the metrics here")
    p.add_argument("--save-reranked", default=None, help="write arrays i2t and t2i here (.npz)")
    p.add_argument("--tune", action="store_true", help="grid-search k/wp1/wp2 on this matrix and print the best")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input)."""
    args = parse_args(argv)
    try:
        for path, flag in ((args.json, "--json"), (args.save_reranked, "--save-reranked")):
            check_output(path, flag)
        sim = load_sims(args.sims)
        txt2img = build_txt2img(args, *sim.shape)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from engine.metrics import retrieval_metrics
    from engine.rerank import apply_rerank, tune_rerank

    if args.tune:
        best, best_mr, table = tune_rerank(sim, txt2img)
        print(f"tune: best galr setting on {args.sims}: k={best['k']} wp1={best['wp1']} wp2={best['wp2']} "
              f"(mR {best_mr:.2f}; no rerank {retrieval_metrics(sim, txt2img)['mR']:.2f}; {len(table)} settings)")
    kw = {} if args.rerank == "none" else {"k": args.k}
    if args.rerank == "galr":
        kw.update(wp1=args.wp1, wp2=args.wp2)
    i2t, t2i = apply_rerank(args.rerank, sim, **kw)
    metrics = retrieval_metrics(i2t, txt2img, sim_t2i=None if args.rerank == "none" else t2i)
    shown = ", ".join(f"{k}={v}" for k, v in kw.items())
    print(format_table(metrics, f"{args.sims}: {sim.shape[0]} images x {sim.shape[1]} captions, "
                                f"rerank {args.rerank}{f' ({shown})' if shown else ''}"))
    try:
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({k: metrics[k] for k in KEYS}, f, indent=2)
        if args.save_reranked:
            np.savez(args.save_reranked, i2t=i2t, t2i=t2i)
    except OSError as e:
        print(f"error: cannot write output: {e.strerror or type(e).__name__} ({e.filename})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
