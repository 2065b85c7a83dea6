"""The leakage check's perceptual hash on the real UCM images: false positives, altered copies found, speed.

    python bench/bench_near_dups.py --root ../shared/data/ucm [--copies 300] [--hash phash --hash-size 16]
        [--threshold 64] [--compare phash:8 dhash:16 ahash:16 whash:16] [--json out.json]

1. Every image of train + test (2100 for UCM) is hashed (``data.near_dups.image_hashes``, the run's own code) and
   every pair is compared. Pairs whose files are byte-identical (SHA-1) are true duplicates (UCM: 102.jpg = 103.jpg);
   every other pair within the threshold is a false positive. Printed: false-positive pairs / all distinct pairs,
   images with a false match / all images, the smallest distance between two different images.
2. ``--copies`` images (seeded sample) get every alteration of ``data.near_dups.ALTERATIONS`` (re-encoded JPEG,
   resized, cropped, brightness); printed per alteration: the largest distance to its original and the share found
   at the threshold.
3. The same two figures for the other hash settings of ``--compare`` at the threshold that keeps their false-positive
   count at the default's (the largest threshold with no more false-positive pairs), so the choice can be checked.

Entry point only: the hashing and the pair search are library code (data.near_dups).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from data.images import load_image  # noqa: E402
from data.near_dups import ALTERATIONS, HashSpec, clear_hashes, close_pairs, distances, hash_bits, image_hashes  # noqa: E402
from data.precomp import load_split  # noqa: E402
from engine.benchmark import markdown_table  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="../shared/data/ucm", help="folder holding ucm_precomp/ (with images/)")
    p.add_argument("--copies", type=int, default=300, help="images that get every alteration")
    p.add_argument("--hash", default="phash")
    p.add_argument("--hash-size", type=int, default=16)
    p.add_argument("--threshold", type=int, default=64)
    p.add_argument("--compare", nargs="*", default=["phash:8", "dhash:16", "ahash:16", "whash:16"],
                   help="other KIND:SIZE settings to compare")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures here")
    return p.parse_args(argv)


def all_paths(root: Path) -> list[Path]:
    folder = root / "ucm_precomp"
    paths = []
    for split in ("train", "test"):
        sp = load_split(folder, split, check_images=False)
        paths += [sp.image_path(i) for i in range(sp.n_images)]
    return paths


def identical_pairs(paths: list[Path]) -> set[tuple[int, int]]:
    by_hash: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        by_hash.setdefault(hashlib.sha1(p.read_bytes()).hexdigest(), []).append(i)
    return {(a, b) for g in by_hash.values() for k, a in enumerate(g) for b in g[k + 1:]}


def false_positives(hashes: np.ndarray, threshold: int, same: set[tuple[int, int]]) -> dict:
    pairs = close_pairs(hashes, None, threshold)
    fp = [(i, j, d) for i, j, d in pairs if (i, j) not in same]
    n = len(hashes)
    total = n * (n - 1) // 2 - len(same)
    return {"pairs": len(fp), "pair_rate": len(fp) / total, "images": len({x for i, j, _ in fp for x in (i, j)}),
            "image_rate": len({x for i, j, _ in fp for x in (i, j)}) / n, "true_duplicate_pairs": len(same),
            "examples": [[i, j, d] for i, j, d in fp[:10]]}


def min_distinct(hashes: np.ndarray, same: set[tuple[int, int]]) -> int:
    best = hashes.shape[1] * 64
    for start in range(0, len(hashes), 256):
        d = distances(hashes[start:start + 256], hashes)
        for r in range(d.shape[0]):
            i = start + r
            d[r, : i + 1] = best  # each pair once, never an image with itself
            for j in [j for (a, j) in same if a == i]:
                d[r, j] = best
        best = min(best, int(d.min()))
    return best


def altered(images: list, originals: np.ndarray, spec: HashSpec) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for img, h in zip(images, originals):
        for name, fn in ALTERATIONS.items():
            out.setdefault(name, []).append(int(np.bitwise_count(hash_bits(fn(img), spec) ^ h).sum()))
    return out


def measure(spec: HashSpec, paths: list[Path], sample: list[int], images: list, same: set) -> dict:
    clear_hashes()
    t = time.perf_counter()
    hashes = image_hashes(paths, spec)
    hash_s = time.perf_counter() - t
    t = time.perf_counter()
    close_pairs(hashes, None, spec.threshold)
    pair_s = time.perf_counter() - t
    alt = altered(images, hashes[sample], spec)
    return {"spec": spec.describe(), "hash_s": hash_s, "pair_search_s": pair_s,
            "min_distinct_distance": min_distinct(hashes, same),
            "false_positives": false_positives(hashes, spec.threshold, same),
            "altered": {k: {"max": max(v), "found": sum(x <= spec.threshold for x in v), "n": len(v)}
                        for k, v in alt.items()},
            "distinct_pairs_within": {t: false_positives(hashes, t, same)["pairs"]
                                      for t in range(spec.threshold, spec.threshold + 17, 4)},
            "hashes": hashes}


def matched_threshold(hashes: np.ndarray, same: set, fp_pairs: int, bits: int) -> int:
    """The largest threshold whose false-positive pair count is at most ``fp_pairs``."""
    t = 0
    while t + 1 < bits and false_positives(hashes, t + 1, same)["pairs"] <= fp_pairs:
        t += 1
    return t


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = all_paths(Path(args.root))
    same = identical_pairs(paths)
    rng = np.random.default_rng(args.seed)
    sample = sorted(rng.choice(len(paths), min(args.copies, len(paths)), replace=False).tolist())
    images = [load_image(paths[i]) for i in sample]
    spec = HashSpec(args.hash, args.hash_size, args.threshold)
    spec.check()
    main_row = measure(spec, paths, sample, images, same)
    fp = main_row["false_positives"]
    print(f"{len(paths)} UCM images ({len(same)} byte-identical pair(s)), {spec.kind} {spec.bits} bits, threshold "
          f"{spec.threshold}: hashing {main_row['hash_s']:.1f} s ({len(paths) / main_row['hash_s']:.0f} images/s), "
          f"pair search {main_row['pair_search_s']:.2f} s")
    print(f"false positives: {fp['pairs']} of {len(paths) * (len(paths) - 1) // 2 - len(same)} distinct pairs "
          f"({fp['pair_rate']:.2e}); {fp['images']} of {len(paths)} images have a false match ({fp['image_rate']:.2%}); "
          f"closest two different images: {main_row['min_distinct_distance']} bits\n")
    near = ", ".join(f"<= {t}: {n}" for t, n in main_row["distinct_pairs_within"].items())
    print(f"pairs of different images within a distance ({near})\n")
    rows = [[name, str(v["max"]), f"{v['found']}/{v['n']}"] for name, v in main_row["altered"].items()]
    print(f"altered copies of {len(sample)} images (found = distance <= {spec.threshold}):\n")
    print(markdown_table((("alteration", "l"), ("max distance", "r"), ("found", "r")), rows))
    compare = []
    for item in args.compare:
        kind, size = item.split(":")
        other = HashSpec(kind, int(size), 0)
        row = measure(other, paths, sample, images, same)
        t = matched_threshold(row["hashes"], same, fp["pairs"], other.bits)
        alt = altered(images, row["hashes"][sample], other)
        found = min(sum(x <= t for x in v) / len(v) for v in alt.values())
        compare.append({"spec": f"{kind} {other.bits} bits", "threshold": t,
                        "min_distinct": row["min_distinct_distance"], "worst_found": found, "hash_s": row["hash_s"]})
    if compare:
        worst = min(v["found"] / v["n"] for v in main_row["altered"].values())
        print(f"\nother hashes at the largest threshold with <= {fp['pairs']} false-positive pair(s):\n")
        table = [[f"{spec.kind} {spec.bits} bits (default)", str(spec.threshold),
                  str(main_row["min_distinct_distance"]), f"{worst:.1%}", f"{main_row['hash_s']:.1f}"]]
        table += [[c["spec"], str(c["threshold"]), str(c["min_distinct"]), f"{c['worst_found']:.1%}",
                   f"{c['hash_s']:.1f}"] for c in compare]
        print(markdown_table((("hash", "l"), ("threshold", "r"), ("closest distinct", "r"),
                              ("worst alteration found", "r"), ("hash s", "r")), table))
    if args.json:
        main_row.pop("hashes")
        Path(args.json).write_text(json.dumps({"main": main_row, "compare": compare}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
