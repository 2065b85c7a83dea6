"""Retrieval pictures with PIL: result grids (text -> images) and caption panels (image -> captions).

Both drawers return the picture and the boxes they drew into, so callers (and tests) can find every panel:

* :func:`draw_grid`: the query as a wrapped title, then one panel per retrieved image, each labelled with its rank,
  score and file name; ground-truth images get a thick green border (others a thin grey one).
* :func:`draw_caption_panel`: the query image on the left, the ranked captions on the right as text rows;
  ground-truth captions are drawn in green with a green bar.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1/y1 exclusive

BG = (255, 255, 255)
INK = (20, 20, 20)
GT = (0, 170, 60)
OTHER = (170, 170, 170)
PAD = 10
BORDER = 5  # ground-truth border width (others get 1 px)


@lru_cache(maxsize=8)
def font(size: int = 14) -> ImageFont.ImageFont:
    """PIL's bundled font at ``size`` (no font file needed; bitmap fallback without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


@dataclass
class Panel:
    """One retrieved item of a grid.

    Attributes:
        image: the picture (None draws a grey "missing" tile).
        label: text under the picture (several lines allowed), e.g. ``"#1  0.873\\nriver_12.tif"``.
        mark: draw the ground-truth border.
    """

    image: Image.Image | None
    label: str
    mark: bool = False


def _line_h(size: int) -> int:
    return int(size * 1.35)


def wrap_title(title: str, width_px: int, size: int = 14) -> list[str]:
    """The title lines draw_grid writes for a picture ``width_px`` wide."""
    chars = max(10, int(width_px / (0.55 * size)))  # ~0.55 em per character for the default sans font
    return textwrap.wrap(title, chars) or [""]


def grid_layout(n: int, cols: int, panel: int, title_lines: int, label_lines: int = 2,
                size: int = 14) -> tuple[tuple[int, int], list[Box]]:
    """Geometry of a grid picture.

    Args:
        n: number of panels. cols: panels per row (clipped to n). panel: square tile side in pixels.
        title_lines / label_lines: text lines above the grid / under each tile.

    Returns:
        ((width, height), boxes): the picture size and the n tile boxes (row-major).
    """
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    top = PAD + title_lines * _line_h(size) + PAD
    cell_w, cell_h = panel + PAD, panel + label_lines * _line_h(size) + PAD
    boxes = []
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = PAD + c * cell_w, top + r * cell_h
        boxes.append((x0, y0, x0 + panel, y0 + panel))
    return (PAD + cols * cell_w, top + rows * cell_h), boxes


def _fit(img: Image.Image | None, side: int) -> Image.Image:
    """The image scaled to fit a side x side tile (aspect kept, centred on white); grey tile if None."""
    tile = Image.new("RGB", (side, side), BG if img is not None else (200, 200, 200))
    if img is None:
        ImageDraw.Draw(tile).text((side // 2, side // 2), "missing", fill=INK, font=font(), anchor="mm")
        return tile
    img = img.convert("RGB")
    scale = side / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    tile.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return tile


def draw_grid(title: str, panels: list[Panel], cols: int = 5, panel: int = 224,
              size: int = 14) -> tuple[Image.Image, list[Box]]:
    """Draw a titled grid of retrieved images.

    Args:
        title: the query (wrapped to the picture width).
        panels: the results in rank order.
        cols: tiles per row. panel: tile side in pixels. size: font size.

    Returns:
        (picture, boxes): RGB picture and the tile box of every panel (see :func:`grid_layout`).
    """
    if not panels:
        raise ValueError("draw_grid needs at least one panel")
    n_cols = max(1, min(cols, len(panels)))
    lines = wrap_title(title, PAD + n_cols * (panel + PAD), size)
    label_lines = max(p.label.count("\n") + 1 for p in panels)
    (w, h), boxes = grid_layout(len(panels), cols, panel, len(lines), label_lines, size)
    pic = Image.new("RGB", (w, h), BG)
    draw = ImageDraw.Draw(pic)
    for j, line in enumerate(lines):
        draw.text((PAD, PAD + j * _line_h(size)), line, fill=INK, font=font(size + 2))
    for p, (x0, y0, x1, y1) in zip(panels, boxes):
        pic.paste(_fit(p.image, panel), (x0, y0))
        colour, width = (GT, BORDER) if p.mark else (OTHER, 1)
        draw.rectangle((x0 - width, y0 - width, x1 + width - 1, y1 + width - 1), outline=colour, width=width)
        for j, line in enumerate(p.label.split("\n")):
            draw.text((x0, y1 + 3 + j * _line_h(size)), _clip(line, panel, size), fill=GT if p.mark else INK,
                      font=font(size))
    return pic, boxes


def _clip(text: str, width_px: int, size: int) -> str:
    chars = max(4, int(width_px / (0.55 * size)))
    return text if len(text) <= chars else text[:chars - 1] + "…"


def draw_caption_panel(image: Image.Image | None, title: str, rows: list[tuple[str, bool]], panel: int = 256,
                       text_width: int = 560, size: int = 14) -> tuple[Image.Image, Box, list[Box]]:
    """Draw an image -> captions result: query image left, ranked caption rows right.

    Args:
        image: the query image. title: heading (e.g. the file name).
        rows: ``(text, is_ground_truth)`` per retrieved caption, in rank order; text already holds rank/score.
        panel: query tile side. text_width: width of the caption column in pixels.

    Returns:
        (picture, image_box, row_boxes): the picture, the query tile box and one box per caption row.
    """
    if not rows:
        raise ValueError("draw_caption_panel needs at least one caption row")
    lh = _line_h(size)
    wrapped = [textwrap.wrap(t, max(10, int((text_width - 12) / (0.55 * size)))) or [""] for t, _ in rows]
    top = PAD + lh + PAD
    x_text = PAD + panel + 2 * PAD
    row_boxes, y = [], top
    for lines in wrapped:
        row_boxes.append((x_text, y, x_text + text_width, y + len(lines) * lh + 6))
        y = row_boxes[-1][3] + PAD
    h = max(y, top + panel + PAD)
    pic = Image.new("RGB", (x_text + text_width + PAD, h), BG)
    draw = ImageDraw.Draw(pic)
    draw.text((PAD, PAD), _clip(title, pic.width - 2 * PAD, size + 2), fill=INK, font=font(size + 2))
    img_box = (PAD, top, PAD + panel, top + panel)
    pic.paste(_fit(image, panel), img_box[:2])
    for (_, gt), lines, (x0, y0, x1, y1) in zip(rows, wrapped, row_boxes):
        colour = GT if gt else INK
        draw.rectangle((x0, y0, x0 + 3, y1 - 1), fill=GT if gt else OTHER)  # rank bar; green = ground truth
        for j, line in enumerate(lines):
            draw.text((x0 + 10, y0 + 3 + j * lh), line, fill=colour, font=font(size))
    return pic, img_box, row_boxes
