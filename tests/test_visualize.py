"""Tests for florence2.visualize.draw_result on every official result layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from florence2.visualize import draw_result

GREY = (128, 128, 128)


def _image(width: int = 200, height: int = 160) -> Image.Image:
    return Image.new("RGB", (width, height), GREY)


def _changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    """(H, W) bool mask of pixels that differ."""
    return np.any(np.asarray(before) != np.asarray(after), axis=-1)


def _draw_and_check(result: dict, *, task: str | None = None) -> tuple[Image.Image, np.ndarray]:
    image = _image()
    before = image.copy()
    drawn = draw_result(image, result, task=task)
    assert drawn is not image
    assert drawn.mode == "RGB" and drawn.size == image.size
    assert image.tobytes() == before.tobytes()  # the input is never modified
    return drawn, _changed(before, drawn)


def test_bboxes_with_labels_and_scores():
    result = {
        "bboxes": [[20, 40, 120, 140], [150.5, 10.2, 190.7, 60.9]],
        "labels": ["car", "dog"],
        "scores": [0.9, 0.5],
    }
    drawn, changed = _draw_and_check(result)
    assert changed[40:141, 20].any() and changed[40:141, 120].any()  # left and right edges
    assert changed[40, 20:121].any() and changed[140, 20:121].any()  # top and bottom edges
    assert not changed[90, 70]  # box interior is not filled
    assert changed[10:61, 150:192].any()
    assert not changed[155, 5]  # far from every shape
    # Different labels get different colours.
    assert tuple(np.asarray(drawn)[90, 20]) != tuple(np.asarray(drawn)[35, 150])


def test_outer_dict_and_task():
    inner = {"bboxes": [[20, 40, 120, 140]], "labels": ["car"]}
    from_outer = draw_result(_image(), {"<OD>": inner})
    assert from_outer.tobytes() == draw_result(_image(), inner).tobytes()
    both = {"<OD>": inner, "<CAPTION>": "a car"}
    assert draw_result(_image(), both, task="<OD>").tobytes() == from_outer.tobytes()
    with pytest.raises(ValueError, match="several tasks"):
        draw_result(_image(), both)


def test_region_proposal_without_labels():
    result = {"bboxes": [[10, 10, 60, 60], [100, 100, 150, 150]], "labels": ["", ""]}
    drawn, changed = _draw_and_check(result)
    assert changed[10:61, 10].any() and changed[100:151, 100].any()
    assert tuple(np.asarray(drawn)[30, 10]) != tuple(np.asarray(drawn)[120, 100])  # one colour each


def test_quad_boxes():
    result = {"quad_boxes": [[30, 50, 170, 50, 170, 110, 30, 110]], "labels": ["</s>CUDA"]}
    _, changed = _draw_and_check({"<OCR_WITH_REGION>": result})
    assert changed[50:111, 30].any() and changed[50:111, 170].any()
    assert changed[110, 30:171].any()
    assert not changed[80, 100]  # quads are outlines only


def test_polygons_are_filled_semi_transparently():
    result = {"polygons": [[[40, 40, 160, 40, 160, 140, 40, 140]]], "labels": [""]}
    drawn, changed = _draw_and_check(result)
    assert changed[90, 100]  # interior tinted
    interior = np.asarray(drawn)[90, 100].astype(int)
    assert np.any(np.abs(interior - np.array(GREY)) < 100)  # ...but the background still shows through
    assert not changed[10, 10] and not changed[150, 190]


def test_polygon_instances_with_several_parts():
    result = {"polygons": [[[10, 10, 50, 10, 30, 50], [120, 100, 180, 100, 150, 150]]], "labels": ["person"]}
    _, changed = _draw_and_check({"<REFERRING_EXPRESSION_SEGMENTATION>": result})
    assert changed[25, 30] and changed[120, 150]


def test_open_vocabulary_detection_layouts():
    boxes = {"bboxes": [[20, 40, 120, 140]], "bboxes_labels": ["a green car"], "polygons": [], "polygons_labels": []}
    _, changed = _draw_and_check({"<OPEN_VOCABULARY_DETECTION>": boxes})
    assert changed[40:141, 20].any()
    polygons = {
        "bboxes": [],
        "bboxes_labels": [],
        "polygons": [[[40, 40, 160, 40, 160, 140, 40, 140]]],
        "polygons_labels": ["a green car"],
    }
    _, changed = _draw_and_check(polygons)
    assert changed[90, 100]


@pytest.mark.parametrize(
    "result",
    [
        {"bboxes": [], "labels": []},
        {"quad_boxes": [], "labels": []},
        {"polygons": [], "labels": []},
        {"bboxes": [], "bboxes_labels": [], "polygons": [], "polygons_labels": []},
        {"<OD>": {"bboxes": [], "labels": []}},
        {"<CAPTION>": "A grey square."},
        "A grey square.",
    ],
)
def test_empty_and_text_results_return_an_equal_copy(result):
    image = _image()
    drawn = draw_result(image, result)
    assert drawn is not image
    assert drawn.tobytes() == image.tobytes()


def test_result_without_drawable_keys():
    with pytest.raises(ValueError, match="nothing to draw"):
        draw_result(_image(), {"text": "hello"})


def test_large_image_scales_lines():
    small = draw_result(_image(200, 160), {"bboxes": [[20, 20, 100, 100]], "labels": [""]})
    large = draw_result(_image(2000, 1600), {"bboxes": [[200, 200, 1000, 1000]], "labels": [""]})
    small_width = _changed(_image(200, 160), small)[60, :50].sum()
    large_width = _changed(_image(2000, 1600), large)[600, :500].sum()
    assert large_width > small_width


def test_shapes_outside_the_image_and_degenerate_polygons_do_not_fail():
    result = {"polygons": [[[5, 5], [10, 10, 20, 20], [-50, -50, 500, -50, 500, 500]]], "labels": ["x"]}
    drawn = draw_result(_image(), result)
    assert drawn.size == (200, 160)
    boxes = {"bboxes": [[300, 300, 400, 400], [120, 140, 20, 40]], "labels": ["off", "flipped"]}
    assert draw_result(_image(), boxes).size == (200, 160)
