"""engine/pictures.py geometry and content; scripts/visualize.py on a trained tiny model (demo set)."""
import json

import numpy as np
import pytest
from PIL import Image

from search.pictures import BORDER, GT, Panel, draw_caption_panel, draw_grid, grid_layout


def photo(seed: int, size=(80, 60)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8))


def variance(pic: Image.Image, box) -> float:
    return float(np.asarray(pic.crop(box), dtype=np.float32).var())


def test_grid_layout_hand_case():
    (w, h), boxes = grid_layout(7, cols=3, panel=100, title_lines=2, label_lines=2, size=10)
    # PAD 10, line height 13: top = 10 + 26 + 10 = 46; cell 110 x (100 + 26 + 10)
    assert (w, h) == (10 + 3 * 110, 46 + 3 * 136)
    assert boxes[0] == (10, 46, 110, 146)
    assert boxes[4] == (120, 182, 220, 282)
    assert len(boxes) == 7 and len(set(boxes)) == 7


def test_draw_grid_panels_sizes_and_ground_truth_border():
    panels = [Panel(photo(i), f"#{i + 1}  0.{9 - i}\nimg_{i}.png", mark=(i == 2)) for i in range(5)]
    pic, boxes = draw_grid("a bridge over a river between green fields " * 3, panels, cols=5, panel=96)
    assert pic.mode == "RGB" and len(boxes) == 5
    title_rows = np.asarray(pic.crop((0, 0, pic.width, boxes[0][1] - 4)), dtype=np.float32)
    assert title_rows.var() > 0  # the title was drawn
    for (x0, y0, x1, y1) in boxes:
        assert (x1 - x0, y1 - y0) == (96, 96)
        assert variance(pic, (x0, y0, x1, y1)) > 100  # the photo, not a blank tile
        assert x1 <= pic.width and y1 <= pic.height
    arr = np.asarray(pic)
    x0, y0, x1, y1 = boxes[2]
    assert tuple(arr[y0 - 2, (x0 + x1) // 2]) == GT  # ground truth: green border around the tile
    assert tuple(arr[y0 - 2, (boxes[1][0] + boxes[1][2]) // 2]) != GT
    assert BORDER >= 3


def test_draw_grid_missing_image_and_aspect():
    wide = Image.new("RGB", (200, 50), (255, 0, 0))
    pic, boxes = draw_grid("q", [Panel(wide, "#1"), Panel(None, "#2")], panel=100)
    arr = np.asarray(pic)
    x0, y0, _, _ = boxes[0]
    assert tuple(arr[y0 + 50, x0 + 50]) == (255, 0, 0)  # scaled to 100 x 25, centred vertically
    assert tuple(arr[y0 + 5, x0 + 50]) == (255, 255, 255)
    assert variance(pic, boxes[1]) > 0  # grey tile with "missing" written on it
    with pytest.raises(ValueError):
        draw_grid("q", [])


def test_caption_panel_rows():
    rows = [(f"#{r}  0.5  a caption that is long enough to wrap around " * 2, r == 2) for r in range(1, 6)]
    pic, img_box, row_boxes = draw_caption_panel(photo(0), "query.png", rows, panel=128, text_width=400)
    assert len(row_boxes) == 5
    assert (img_box[2] - img_box[0], img_box[3] - img_box[1]) == (128, 128)
    assert variance(pic, img_box) > 100
    for b in row_boxes:
        assert variance(pic, b) > 0 and b[3] <= pic.height and b[2] <= pic.width
    assert all(a[3] <= b[1] for a, b in zip(row_boxes, row_boxes[1:]))  # rows do not overlap
    green = np.asarray(pic.crop(row_boxes[1]))
    assert (green == np.array(GT, dtype=np.uint8)).all(axis=2).sum() > 20  # ground-truth row drawn in green


def test_gt_rank_follows_the_shown_order():
    from scripts.visualize import gt_rank, pick, ranking

    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.5])
    order = ranking(scores)
    assert order.tolist() == [1, 0, 2, 4, 3]  # ties in file order
    assert gt_rank(order, [2]) == 3 and gt_rank(order, [3, 4]) == 4 and gt_rank(order, [1]) == 1
    assert pick(10, 3, None) == [0, 4, 9] and pick(2, 5, None) == [0, 1]
    assert len(set(pick(100, 8, seed=1))) == 8


def test_stack_sheet_keeps_every_picture_in_a_palette_image():
    from scripts.visualize import VisualizeError, stack_sheet

    pics = [photo(1, (120, 40)), photo(2, (80, 30)), Image.new("RGB", (100, 20), (0, 128, 0))]
    sheet = stack_sheet(pics, gap=5, colours=64)
    assert sheet.mode == "P" and len(sheet.getcolors()) <= 64
    assert sheet.size == (120, 40 + 30 + 20 + 2 * 5)
    rgb = np.asarray(sheet.convert("RGB"), dtype=np.int16)
    assert np.abs(rgb[40 + 5 + 30 + 5:, :100] - np.array([0, 128, 0])).max() <= 8  # the third picture, in place
    assert (rgb[40 + 5 + 30 + 5:, 100:] == 255).all()  # narrower pictures are padded with white
    assert (rgb[40:45] == 255).all()  # the gap
    with pytest.raises(VisualizeError):
        stack_sheet([])
