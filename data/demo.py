"""A small synthetic "aerial" retrieval set for demos and tests: ``<root>/demo_precomp/``.

Scenes are drawn with PIL on a noisy ground (green, yellow or brown): lakes, residential blocks, forests, farmland,
rivers, parking lots, beaches and airports, with varying colours, counts, orientations and positions. Every image
gets five different captions generated from templates that state what was drawn (scene, colours, counts, sides),
so a small CNN + GRU learns the set quickly. Files follow the real ``*_precomp`` layout: ``train_filename.txt`` one
line per image, ``test_filename.txt`` one line per caption, images ``images/<scene>_<n>.png`` (96x96 RGB; the scene
prefix gives scene labels for scene recall). Generation is deterministic (``numpy.random.Generator(0)``; same bytes
on every run) and takes a few seconds.
"""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

VERSION = "rsitr-demo-1"
SIZE = 96
N_TRAIN, N_TEST = 1000, 100
GROUND = {"green": (72, 128, 60), "yellow": (190, 172, 96), "brown": (128, 94, 62)}
PAINT = {"red": (200, 40, 35), "white": (235, 235, 230), "gray": (140, 140, 140), "orange": (230, 130, 30),
         "blue": (40, 80, 200), "black": (25, 25, 25)}
WATER, ROAD, TREE, SAND = (35, 75, 160), (110, 110, 110), (25, 80, 35), (215, 195, 140)
NUM = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
SIDES = {"left": (24, 48), "right": (72, 48), "top": (48, 24), "bottom": (48, 72), "center": (48, 48)}
Attrs = dict


def _jitter(rng: np.random.Generator, rgb: tuple, amount: int = 12) -> tuple:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _ground(rng: np.random.Generator, name: str) -> Image.Image:
    base = np.array(_jitter(rng, GROUND[name]), dtype=np.float32)
    noise = rng.normal(0.0, 9.0, (SIZE, SIZE, 1)).astype(np.float32)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _pick(rng: np.random.Generator, options: list) -> object:
    return options[int(rng.integers(len(options)))]


def _road(draw: ImageDraw.ImageDraw, rng: np.random.Generator, orient: str, width: int = 9) -> None:
    c = int(rng.integers(40, 57))
    box = (0, c - width // 2, SIZE, c + width // 2) if orient == "horizontal" else (c - width // 2, 0, c + width // 2, SIZE)
    draw.rectangle(box, fill=_jitter(rng, ROAD, 8))


def _trees(draw: ImageDraw.ImageDraw, rng: np.random.Generator, n: int, box=(4, 4, 92, 92)) -> None:
    for _ in range(n):
        x, y, r = int(rng.integers(box[0], box[2])), int(rng.integers(box[1], box[3])), int(rng.integers(3, 6))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_jitter(rng, TREE, 10))


# ------------------------------------------------------------------------------------------- scene drawers
def _lake(draw, rng, a: Attrs) -> None:
    a["side"], a["size"] = _pick(rng, list(SIDES)), _pick(rng, ["small", "large"])
    cx, cy = SIDES[a["side"]]
    r = int(rng.integers(9, 12)) if a["size"] == "small" else int(rng.integers(18, 22))
    draw.ellipse((cx - r, cy - int(r * 0.8), cx + r, cy + int(r * 0.8)), fill=_jitter(rng, WATER, 10))


def _residential(draw, rng, a: Attrs) -> None:
    a["n"], a["color"], a["orient"] = int(rng.integers(2, 7)), _pick(rng, ["red", "white", "gray", "orange"]), \
        _pick(rng, ["horizontal", "vertical"])
    _road(draw, rng, a["orient"])
    cells = [(r, c) for r in range(3) for c in range(3) if (r if a["orient"] == "horizontal" else c) != 1]
    for k in rng.permutation(len(cells))[: a["n"]]:
        r, c = cells[k]
        x, y, w = 32 * c + int(rng.integers(4, 9)), 32 * r + int(rng.integers(4, 9)), int(rng.integers(14, 19))
        draw.rectangle((x, y, x + w, y + w), fill=_jitter(rng, PAINT[a["color"]], 10), outline=(60, 60, 60))


def _forest(draw, rng, a: Attrs) -> None:
    a["density"], a["house"] = _pick(rng, ["dense", "sparse"]), bool(rng.integers(2))
    _trees(draw, rng, int(rng.integers(45, 60)) if a["density"] == "dense" else int(rng.integers(6, 10)))
    if a["house"]:
        x, y = int(rng.integers(10, 70)), int(rng.integers(10, 70))
        draw.rectangle((x, y, x + 14, y + 14), fill=_jitter(rng, PAINT["white"], 5))


def _farmland(draw, rng, a: Attrs) -> None:
    pair = _pick(rng, [("green", "yellow"), ("green", "brown"), ("yellow", "brown")])
    a["colors"], a["orient"], a["n"] = pair, _pick(rng, ["horizontal", "vertical"]), int(rng.integers(3, 7))
    step = SIZE / a["n"]
    for k in range(a["n"]):
        lo, hi = int(k * step), int((k + 1) * step) - 1
        box = (0, lo, SIZE, hi) if a["orient"] == "horizontal" else (lo, 0, hi, SIZE)
        draw.rectangle(box, fill=_jitter(rng, GROUND[pair[k % 2]], 8))


def _river(draw, rng, a: Attrs) -> None:
    a["orient"], a["bridge"] = _pick(rng, ["horizontal", "vertical", "diagonal"]), bool(rng.integers(2))
    w, c = int(rng.integers(12, 17)), int(rng.integers(40, 57))
    if a["orient"] == "diagonal":
        draw.polygon([(0, 0), (w, 0), (SIZE, SIZE - w), (SIZE, SIZE), (SIZE - w, SIZE), (0, w)],
                     fill=_jitter(rng, WATER, 10))
    else:
        box = (0, c - w // 2, SIZE, c + w // 2) if a["orient"] == "horizontal" else (c - w // 2, 0, c + w // 2, SIZE)
        draw.rectangle(box, fill=_jitter(rng, WATER, 10))
    if a["bridge"]:
        if a["orient"] == "horizontal":
            draw.rectangle((44, c - w, 52, c + w), fill=ROAD)
        elif a["orient"] == "vertical":
            draw.rectangle((c - w, 44, c + w, 52), fill=ROAD)
        else:
            draw.polygon([(30, 66), (36, 72), (66, 42), (60, 36)], fill=ROAD)


def _parking(draw, rng, a: Attrs) -> None:
    a["amount"], a["color"] = _pick(rng, ["several", "many"]), _pick(rng, ["red", "white", "blue", "black"])
    draw.rectangle((12, 12, 84, 84), fill=_jitter(rng, ROAD, 8))
    slots = [(16 + 9 * c, 18 + 22 * r) for r in range(3) for c in range(8)]
    n = int(rng.integers(2, 5)) if a["amount"] == "several" else int(rng.integers(12, 19))
    for k in rng.permutation(len(slots))[:n]:
        x, y = slots[k]
        draw.rectangle((x, y, x + 5, y + 10), fill=_jitter(rng, PAINT[a["color"]], 8))


def _beach(draw, rng, a: Attrs) -> None:
    a["side"], a["n"], a["color"] = _pick(rng, ["left", "right", "top", "bottom"]), int(rng.integers(1, 4)), \
        _pick(rng, ["red", "white", "orange"])
    draw.rectangle((0, 0, SIZE, SIZE), fill=_jitter(rng, SAND, 8))
    sea = {"left": (0, 0, 47, 96), "right": (48, 0, 96, 96), "top": (0, 0, 96, 47), "bottom": (0, 48, 96, 96)}
    box = sea[a["side"]]
    draw.rectangle(box, fill=_jitter(rng, WATER, 10))
    for _ in range(a["n"]):
        x, y = int(rng.integers(box[0] + 4, box[2] - 12)), int(rng.integers(box[1] + 4, box[3] - 12))
        draw.rectangle((x, y, x + 8, y + 4) if a["side"] in ("top", "bottom") else (x, y, x + 4, y + 8),
                       fill=_jitter(rng, PAINT[a["color"]], 8))


def _airport(draw, rng, a: Attrs) -> None:
    a["orient"], a["n"] = _pick(rng, ["horizontal", "vertical"]), int(rng.integers(1, 5))
    _road(draw, rng, a["orient"], width=17)
    for k in range(a["n"]):
        p, q = 12 + 22 * k, int(rng.integers(10, 18))
        x, y = (p, q) if a["orient"] == "horizontal" else (q, p)
        draw.rectangle((x, y + 4, x + 12, y + 7), fill=PAINT["white"])
        draw.rectangle((x + 4, y, x + 7, y + 12), fill=PAINT["white"])


# ------------------------------------------------------------------------------------------- captions
# one function per scene: five templates, each stating the drawn attributes; ``s`` picks a synonym at random
def _cap_lake(a: Attrs, g: str, s: Callable) -> list[str]:
    where = "in the middle" if a["side"] == "center" else f"on the {a['side']} side"
    return [f"a {a['size']} blue lake lies {where} of a {g} field .",
            f"there is a {a['size']} {s(['lake', 'pond'])} {where} surrounded by {g} land .",
            f"{g} {s(['grassland', 'land', 'ground'])} with a {a['size']} pond {where} .",
            f"the lake {where} is {a['size']} and the ground around it is {g} .",
            f"a {a['size']} body of water sits {where} of the {g} area ."]


def _cap_residential(a: Attrs, g: str, s: Callable) -> list[str]:
    n, c, o = NUM[a["n"]], a["color"], a["orient"]
    return [f"{n} {s(['buildings', 'houses'])} with {c} roofs stand beside a {o} road .",
            f"a {o} road passes through a residential area with {n} {c} houses .",
            f"there are {n} {c} {s(['buildings', 'houses'])} on {g} ground next to a road .",
            f"a residential area : {n} houses with {c} roofs and a {o} gray road .",
            f"{n} {c} buildings are arranged on both sides of the {o} road ."]


def _cap_forest(a: Attrs, g: str, s: Callable) -> list[str]:
    d = a["density"]
    extra = "a white house stands among the trees" if a["house"] else "only trees grow there"
    many = "many" if d == "dense" else "scattered"
    return [f"a {d} forest with {many} dark green trees on {g} ground .",
            f"{many} trees grow on the {g} land and {extra} .",
            f"this is a {d} forest and {extra} .",
            f"{d} green trees cover the {g} area .",
            f"a {d} {s(['forest', 'woodland'])} seen from above with {g} soil between the trees ."]


def _cap_farmland(a: Attrs, g: str, s: Callable) -> list[str]:
    (c1, c2), n, o = a["colors"], NUM[a["n"]], a["orient"]
    return [f"{n} {o} strips of {c1} and {c2} farmland .",
            f"the farmland is divided into {n} {o} fields , {c1} and {c2} .",
            f"{c1} and {c2} {s(['fields', 'crops'])} alternate in {o} strips .",
            f"there are {n} {o} {s(['fields', 'strips'])} in {c1} and {c2} colors .",
            f"a piece of farmland with {o} {c1} and {c2} stripes ."]


def _cap_river(a: Attrs, g: str, s: Callable) -> list[str]:
    o = a["orient"]
    br = "a bridge crosses it" if a["bridge"] else "it flows without a bridge"
    return [f"a {o} blue river runs through the {g} land and {br} .",
            f"a river flows {s(['across', 'through'])} the {g} area in a {o} direction and {br} .",
            f"{g} ground on both sides of a {o} river" + (" with a gray bridge ." if a["bridge"] else " ."),
            f"the {o} river is blue and {br} .",
            f"there is a {o} river and {br} over the water ." if a["bridge"] else
            f"there is a {o} river with {g} banks and without a bridge ."]


def _cap_parking(a: Attrs, g: str, s: Callable) -> list[str]:
    m, c = a["amount"], a["color"]
    return [f"a gray parking lot with {m} {c} cars .",
            f"{m} {c} {s(['cars', 'vehicles'])} are parked in a parking lot on {g} ground .",
            f"there are {m} {c} cars in the {s(['parking lot', 'car park'])} .",
            f"a parking lot surrounded by {g} land with {m} cars , all {c} .",
            f"{m} {c} cars stand in rows on the gray lot ."]


def _cap_beach(a: Attrs, g: str, s: Callable) -> list[str]:
    n, c, side = NUM[a["n"]], a["color"], a["side"]
    boats = "boat" if a["n"] == 1 else "boats"
    return [f"a sandy beach with the blue sea on the {side} side and {n} {c} {boats} .",
            f"the sea is on the {side} and {n} {c} {boats} float on the water .",
            f"{n} {c} {boats} on the blue water next to a yellow beach .",
            f"a beach : sand and the sea on the {side} with {n} {boats} .",
            f"yellow sand meets the sea on the {side} side where {n} {c} {boats} are ."]


def _cap_airport(a: Attrs, g: str, s: Callable) -> list[str]:
    n, o = NUM[a["n"]], a["orient"]
    planes = "plane" if a["n"] == 1 else "planes"
    return [f"an airport with a {o} runway and {n} white {planes} .",
            f"{n} white {planes} are parked next to a {o} runway on {g} ground .",
            f"a gray {o} runway crosses the {g} area with {n} {planes} beside it .",
            f"there are {n} {planes} near the {o} runway of the airport .",
            f"the airport has {n} white {planes} and a long {o} runway ."]


# scene -> (drawer, captioner); the scene name prefixes the image file names
SCENES: dict[str, tuple[Callable, Callable]] = {
    "lake": (_lake, _cap_lake), "residential": (_residential, _cap_residential), "forest": (_forest, _cap_forest),
    "farmland": (_farmland, _cap_farmland), "river": (_river, _cap_river), "parking": (_parking, _cap_parking),
    "beach": (_beach, _cap_beach), "airport": (_airport, _cap_airport)}


def _make_image(scene: str, rng: np.random.Generator) -> tuple[Image.Image, list[str]]:
    a: Attrs = {"ground": _pick(rng, list(GROUND))}
    img = _ground(rng, a["ground"])
    draw, caption = SCENES[scene]
    draw(ImageDraw.Draw(img), rng, a)
    return img, caption(a, a["ground"], lambda options: _pick(rng, options))


def generate(folder: Path, n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = 0) -> None:
    """Write a demo precomp set into ``folder`` (created; must not exist or be empty)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(SCENES)
    counter = 0
    for split, n in (("train", n_train), ("test", n_test)):
        filenames, captions = [], []
        for i in range(n):
            scene = names[i % len(names)]
            img, caps = _make_image(scene, rng)
            name = f"{scene}_{counter}.png"
            counter += 1
            img.save(folder / "images" / name, format="PNG", optimize=False)
            captions += caps
            filenames += [name] * (1 if split == "train" else len(caps))
        (folder / f"{split}_caps.txt").write_text("".join(c + "\n" for c in captions))
        (folder / f"{split}_filename.txt").write_text("".join(f + "\n" for f in filenames))
    (folder / "VERSION").write_text(VERSION + "\n")


def ensure_demo(root: str | Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> Path:
    """Return ``root/demo_precomp``, generating it first if needed.

    Generation happens in a private temporary folder that is renamed into place, so a concurrent caller either sees
    the complete folder or builds its own copy and drops it when it loses the rename race.

    Args:
        root: folder that holds ``demo_precomp/`` (``data.root``).
        n_train, n_test: image counts used when generating (tests use small sets).
    """
    root = Path(root)
    final = root / "demo_precomp"
    if (final / "VERSION").is_file():
        found = (final / "VERSION").read_text().strip()
        if found != VERSION:
            log.warning("%s was generated by %s, this code generates %s: delete the folder to regenerate it",
                        final, found, VERSION)
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".demo_precomp.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        generate(tmp, n_train, n_test)
        try:
            os.rename(tmp, final)
            log.info("generated the demo dataset in %s", final)
        except OSError:
            if not (final / "VERSION").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
