"""Random crops of training examples: every located region stays in the window and its tokens follow
the pixels; examples without regions, or with unreadable runs, are left alone; crops are seeded.
Mosaics: four box-listing examples tiled 2x2, their boxes where the pixels went, in the task's order."""

import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from florence2.coords import dequantize_flat, loc_tokens, parse_loc_tokens, quantize_flat
from florence2.data.augment import crop_example, mosaic_example, random_crops, random_mosaics
from florence2.data.formats import Example

SIZE = (100, 80)
SQUARE = (20, 30, 50, 60)  # white on black, pixels [20, 50) x [30, 60)
QUAD = (70, 8, 90, 8, 90, 20, 70, 20)


@pytest.fixture()
def image(tmp_path):
    picture = Image.new("RGB", SIZE, "black")
    draw = ImageDraw.Draw(picture)
    draw.rectangle([SQUARE[0], SQUARE[1], SQUARE[2] - 1, SQUARE[3] - 1], fill="white")
    draw.rectangle([QUAD[0], QUAD[1], QUAD[4] - 1, QUAD[5] - 1], fill=(255, 0, 0))
    path = tmp_path / "scene.png"
    picture.save(path)
    return str(path)


def _extent(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float64)


def test_a_crop_keeps_every_region_and_its_tokens_follow_the_pixels(image):
    target = f"square{loc_tokens(quantize_flat(SQUARE, SIZE))}"
    prompt = f"What is in the region {loc_tokens(quantize_flat(QUAD, SIZE))}?"
    example = Example(image, prompt, target, "<OD>", "test:1")
    scales = []
    for seed in range(20):
        out = crop_example(example, np.random.default_rng(seed), min_scale=0.5)
        assert out["image"].size == SIZE and out["task"] == "<OD>" and out["target"].startswith("square<loc_")
        pixels = np.asarray(out["image"]).astype(int)
        white = (pixels > 200).all(-1)
        red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60)
        box = dequantize_flat(parse_loc_tokens(out["target"]), SIZE)
        quad = dequantize_flat(parse_loc_tokens(out["prompt"]), SIZE)
        # the square and the quad are whole inside the window, where the new tokens say
        np.testing.assert_allclose(box, _extent(white), atol=2.5)
        np.testing.assert_allclose(quad[[0, 1, 4, 5]], _extent(red), atol=2.5)
        scales.append((box[2] - box[0]) / (SQUARE[2] - SQUARE[0]))
    # zoomed in by up to 1 / 0.5, never out
    assert min(scales) > 0.95 and max(scales) > 1.3


def test_examples_without_regions_or_with_odd_runs_are_left_alone(image):
    caption = Example(image, "What does the image describe?", "A white square.", "<CAPTION>", "t")
    odd = Example(image, "x", "square<loc_1><loc_2><loc_3>", None, "t")
    for example in (caption, odd):
        assert crop_example(example, np.random.default_rng(0)) is example


def test_crops_are_seeded_by_item(image):
    example = Example(image, "Locate", f"square{loc_tokens(quantize_flat(SQUARE, SIZE))}", "<OD>", "t")
    first = random_crops(lambda i: example, 0.5, seed=3)
    again = random_crops(lambda i: example, 0.5, seed=3)
    other = random_crops(lambda i: example, 0.5, seed=4)
    assert first(7)["target"] == again(7)["target"]
    assert np.array_equal(np.asarray(first(7)["image"]), np.asarray(again(7)["image"]))
    assert len({first(i)["target"] for i in range(6)} | {other(7)["target"]}) > 3


def test_a_region_larger_than_the_smallest_window_sets_the_scale(image):
    whole = (0, 0, 100, 80)
    example = Example(image, "Locate", f"square{loc_tokens(quantize_flat(whole, SIZE))}", "<OD>", "t")
    out = crop_example(example, np.random.default_rng(0), min_scale=0.3)
    assert out["target"] == example.target  # the window is the image


@pytest.mark.parametrize("scale", [0.0, -0.5, 1.5])
def test_bad_scales_are_refused(image, scale):
    example = Example(image, "Locate", "square<loc_1><loc_2><loc_3><loc_4>", "<OD>", "t")
    with pytest.raises(ValueError, match="min_scale"):
        crop_example(example, np.random.default_rng(0), scale)
    with pytest.raises(ValueError, match="min_scale"):
        random_crops(lambda i: example, scale, seed=0)


# --- mosaics -------------------------------------------------------------------------------------

COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0))
BOXES = ((10, 40, 40, 70), (60, 10, 90, 30), (30, 10, 60, 50), (0, 0, 20, 16))  # one per tile, pixels
LABELS = ("square", "circle", "square", "star")


@pytest.fixture()
def tiles(tmp_path):
    examples = []
    for k, (color, box, label) in enumerate(zip(COLORS, BOXES, LABELS)):
        picture = Image.new("RGB", SIZE, "black")
        ImageDraw.Draw(picture).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=color)
        path = tmp_path / f"tile{k}.png"
        picture.save(path)
        target = f"{label}{loc_tokens(quantize_flat(box, SIZE))}"
        examples.append(Example(str(path), "<OD>", target, "<OD>", f"t:{k}"))
    return examples


def test_a_mosaic_tiles_four_examples_and_lists_their_boxes_in_reading_order(tiles):
    out = mosaic_example(tiles)
    assert out["image"].size == SIZE and out["task"] == "<OD>" and out["prompt"] == "<OD>"
    assert out["source"] == "t:0 + t:1 + t:2 + t:3 (mosaic)"
    # each tile at half size in its quarter (origins (0, 0), (50, 0), (0, 40), (50, 40))
    placed = [(5, 20, 20, 35), (80, 5, 95, 15), (15, 45, 30, 65), (50, 40, 60, 48)]
    pixels = np.asarray(out["image"]).astype(int)
    for color, box in zip(COLORS, placed):
        np.testing.assert_allclose(_extent((np.abs(pixels - color) < 60).all(-1)), box, atol=1.5)
    # reading order by top edge (circle 5, square 20, star 40, square 45), one square group
    runs = re.findall(r"([a-z]+)((?:<loc_\d+>)+)", out["target"])
    assert [label for label, _ in runs] == ["circle", "square", "star"]
    assert "".join(label + tokens for label, tokens in runs) == out["target"]
    boxes = np.reshape(dequantize_flat(parse_loc_tokens(out["target"]), SIZE), (-1, 4))
    np.testing.assert_allclose(boxes, [placed[1], placed[0], placed[2], placed[3]], atol=1.0)


def test_examples_that_cannot_be_tiled_are_left_alone(tiles, image):
    caption = Example(image, "What does the image describe?", "A white square.", "<CAPTION>", "t")
    other_task = Example(tiles[1].image, "<REGION_PROPOSAL>", "<loc_1><loc_2><loc_3><loc_4>", "<REGION_PROPOSAL>", "t")
    quads = Example(tiles[1].image, "<OD>", "text" + "<loc_1>" * 8 + "x<loc_2>" * 2, "<OD>", "t")
    for examples in (
        [caption, *tiles[1:]],
        [tiles[0], other_task, *tiles[2:]],
        [tiles[0], quads, *tiles[2:]],
        tiles[:3],
    ):
        assert mosaic_example(examples) is examples[0]


def test_mosaics_are_seeded_by_item_and_cropped_after(tiles):
    get = random_mosaics(lambda i: tiles[i % 4], tiles, share=0.5, seed=3)
    items = [get(i) for i in range(40)]
    tiled = [i for i, item in enumerate(items) if isinstance(item, dict)]
    assert 8 < len(tiled) < 32  # about half
    assert all(items[i] is tiles[i % 4] for i in range(40) if i not in tiled)
    again = random_mosaics(lambda i: tiles[i % 4], tiles, share=0.5, seed=3)
    assert [again(i)["target"] for i in tiled] == [items[i]["target"] for i in tiled]
    assert random_mosaics(lambda i: tiles[0], tiles, share=0.0, seed=3)(5) is tiles[0]
    cropped = crop_example(items[tiled[0]], np.random.default_rng(0), min_scale=0.6)
    assert cropped["source"].endswith("(mosaic) (cropped)") and cropped["image"].size == SIZE
    with pytest.raises(ValueError, match="share"):
        random_mosaics(lambda i: tiles[0], tiles, share=1.5, seed=0)
