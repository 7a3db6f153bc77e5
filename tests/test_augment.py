"""Random crops of training examples: every located region stays in the window and its tokens follow
the pixels; examples without regions, or with unreadable runs, are left alone; crops are seeded."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from florence2.coords import dequantize_flat, loc_tokens, parse_loc_tokens, quantize_flat
from florence2.data.augment import crop_example, random_crops
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
