"""Tests of the synthetic world: determinism, geometry of the annotations against the rendered pixels,
captions and phrases, and the split files on disk."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from florence2.data.synthetic import (
    ANNOTATIONS_FILE,
    CATEGORIES,
    COLORS,
    SHAPES,
    SIZES,
    SyntheticWorld,
    WorldConfig,
    generate_scene,
    read_split,
    validate_record,
    write_split,
)
from florence2.errors import AnnotationError

CONFIG = WorldConfig(image_size=192, max_objects=5, text_probability=0.8)
SEED = 7


@pytest.fixture(scope="module")
def scenes() -> list[tuple[Image.Image, dict]]:
    world = SyntheticWorld(CONFIG, seed=SEED)
    return [world.scene(i) for i in range(24)]


def _points(flat: list[float]) -> np.ndarray:
    return np.asarray(flat, dtype=np.float64).reshape(-1, 2)


def _mask(flat: list[float], width: int, height: int) -> np.ndarray:
    """(H, W) bool: pixels whose centres lie inside the polygon, by exact even-odd ray casting.

    Independent of Pillow's rasterizer, which rounds vertices to whole pixels.
    """
    points = _points(flat)
    mask = np.zeros((height, width), dtype=bool)
    x0, y0 = np.floor(points.min(0)).astype(int)
    x1, y1 = np.ceil(points.max(0)).astype(int)
    ys, xs = np.mgrid[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)] + 0.5
    inside = np.zeros(xs.shape, dtype=bool)
    for (xa, ya), (xb, yb) in zip(points, np.roll(points, -1, axis=0)):
        if ya == yb:
            continue
        crosses = (ya > ys) != (yb > ys)
        inside ^= crosses & (xs < xa + (ys - ya) * (xb - xa) / (yb - ya))
    mask[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)] = inside
    return mask


def _covered(flat: list[float], width: int, height: int, scale: int = 4) -> np.ndarray:
    """Pixels the polygon covers entirely (sampled on a ``scale`` times finer grid), so that a notch
    narrower than a pixel counts as uncovered."""
    fine = _mask([v * scale for v in flat], width * scale, height * scale)
    return fine.reshape(height, scale, width, scale).all(axis=(1, 3))


def _touched(flat: list[float], width: int, height: int, scale: int = 4) -> np.ndarray:
    """Pixels that any part of the polygon reaches (sampled on a ``scale`` times finer grid), so that
    sharp tips thinner than a pixel count too."""
    fine = _mask([v * scale for v in flat], width * scale, height * scale)
    return fine.reshape(height, scale, width, scale).any(axis=(1, 3))


def _morph(mask: np.ndarray, radius: int, combine) -> np.ndarray:
    """Combine a mask with its shifts by up to ``radius`` pixels: a square dilation or erosion."""
    out = mask.copy()
    padded = np.pad(mask, radius, constant_values=False)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            window = padded[radius + dy : radius + dy + mask.shape[0], radius + dx : radius + dx + mask.shape[1]]
            out = combine(out, window)
    return out


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    return _morph(mask, radius, np.logical_or)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    return _morph(mask, radius, np.logical_and)


def _interior(record: dict, i: int) -> np.ndarray:
    """Pixels at least a pixel inside object ``i``'s polygon and at least a pixel away from every later
    (covering) object: these must show exactly the object's colour."""
    w, h = record["width"], record["height"]
    inside = _erode(_covered(record["objects"][i]["polygon"], w, h), 1)
    for later in record["objects"][i + 1 :]:
        inside &= ~_dilate(_touched(later["polygon"], w, h), 1)
    return inside


def _signed_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------


def test_scene_is_deterministic_per_seed_and_index(scenes):
    image, record = SyntheticWorld(CONFIG, seed=SEED).scene(5)
    assert np.array_equal(np.asarray(image), np.asarray(scenes[5][0]))
    assert record == scenes[5][1]
    # Out of order and from a fresh world: same scene.
    again = SyntheticWorld(CONFIG, seed=SEED)
    again.scene(11)
    assert again.scene(5)[1] == record


def test_different_seeds_and_indices_differ(scenes):
    other = SyntheticWorld(CONFIG, seed=SEED + 1).scene(5)
    assert not np.array_equal(np.asarray(other[0]), np.asarray(scenes[5][0]))
    assert other[1]["captions"] != scenes[5][1]["captions"] or other[1]["objects"] != scenes[5][1]["objects"]
    assert len({json.dumps(r["objects"]) for _, r in scenes}) == len(scenes)


def test_generate_scene_matches_world_scene(scenes):
    rng = np.random.default_rng(np.random.SeedSequence([SEED, 3]))
    image, record = generate_scene(rng, CONFIG, image_name="000003.png")
    assert np.array_equal(np.asarray(image), np.asarray(scenes[3][0]))
    assert record == scenes[3][1]


def test_iteration_is_endless_and_matches_scene(scenes):
    world = SyntheticWorld(CONFIG, seed=SEED)
    assert not hasattr(world, "__len__")
    for (image, record), (expected_image, expected) in zip(itertools.islice(world, 3), scenes[:3]):
        assert record == expected
        assert np.array_equal(np.asarray(image), np.asarray(expected_image))


@pytest.mark.parametrize("seed, index", [(-1, 0), (0, -1), (0, 1.5)])
def test_negative_seed_or_index_is_rejected(seed, index):
    with pytest.raises(ValueError):
        SyntheticWorld(CONFIG, seed=seed).scene(index)


# --------------------------------------------------------------------------------------------------
# Geometry against pixels
# --------------------------------------------------------------------------------------------------


def test_records_validate_and_round_trip_through_json(scenes):
    for image, record in scenes:
        validate_record(record)
        assert json.loads(json.dumps(record)) == record
        assert image.mode == "RGB" and image.size == (record["width"], record["height"]) == (192, 192)
        assert [o["id"] for o in record["objects"]] == list(range(len(record["objects"])))


def test_boxes_lie_inside_image_and_bound_polygons(scenes):
    for _, record in scenes:
        w, h = record["width"], record["height"]
        for obj in record["objects"]:
            points = _points(obj["polygon"])
            x0, y0, x1, y1 = obj["bbox"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert np.allclose([x0, y0, x1, y1], [*points.min(0), *points.max(0)])


def test_polygons_run_clockwise_from_topmost_vertex(scenes):
    for _, record in scenes:
        for obj in record["objects"]:
            points = _points(obj["polygon"])
            assert _signed_area(points) > 0  # clockwise on screen, y down
            top = min(range(len(points)), key=lambda i: (points[i, 1], points[i, 0]))
            assert top == 0
            if obj["category"] in ("circle", "heart"):
                assert len(points) == CONFIG.curve_vertices


def test_size_class_follows_polygon_area(scenes):
    for _, record in scenes:
        for obj in record["objects"]:
            fraction = _signed_area(_points(obj["polygon"])) / (record["width"] * record["height"])
            low, high = SIZES[obj["size"]]
            assert low - 1e-3 <= fraction <= high + 1e-3, (obj["size"], fraction)


def test_object_colour_fills_the_visible_polygon(scenes):
    """Every pixel well inside a polygon and not under a later object has exactly the object's colour."""
    checked = 0
    for image, record in scenes:
        pixels = np.asarray(image)
        w, h = record["width"], record["height"]
        for i, obj in enumerate(record["objects"]):
            inside = _interior(record, i)
            if obj["visible"] > 0.5:
                assert inside.sum() > 0.3 * _mask(obj["polygon"], w, h).sum()
            assert np.all(pixels[inside] == COLORS[obj["color"]]), (record["image"], obj)
            checked += 1
            # The centroid of a convex shape nobody covers has the shape's colour.
            if obj["visible"] == 1.0 and obj["category"] in ("circle", "square", "hexagon", "diamond"):
                cx, cy = _points(obj["polygon"]).mean(0)
                assert tuple(pixels[int(cy), int(cx)]) == COLORS[obj["color"]]
    assert checked > 40


def test_visible_fraction_and_occlusion_limit(scenes):
    saw_overlap = False
    for _, record in scenes:
        w, h = record["width"], record["height"]
        masks = [_mask(o["polygon"], w, h) for o in record["objects"]]
        for i, obj in enumerate(record["objects"]):
            covered = np.zeros_like(masks[i])
            for later in masks[i + 1 :]:
                covered |= later
            visible = (masks[i] & ~covered).sum() / masks[i].sum()
            assert obj["visible"] == pytest.approx(visible, abs=2e-3)
            assert obj["visible"] >= 1 - CONFIG.max_occlusion - 2e-3
            saw_overlap |= obj["visible"] < 1
    assert saw_overlap


def test_no_overlap_when_max_occlusion_is_zero():
    world = SyntheticWorld(WorldConfig(image_size=128, min_objects=3, max_objects=4, max_occlusion=0), seed=1)
    for index in range(8):
        _, record = world.scene(index)
        masks = [_mask(o["polygon"], 128, 128) for o in record["objects"]]
        assert np.sum(masks, axis=0).max() <= 1
        assert all(o["visible"] == 1.0 for o in record["objects"])


def test_shapes_of_one_colour_never_touch():
    config = WorldConfig(image_size=128, min_objects=3, max_objects=3, colors=("green",), max_occlusion=0.3)
    world = SyntheticWorld(config, seed=4)
    for index in range(6):
        _, record = world.scene(index)
        touched = [_touched(o["polygon"], 128, 128) for o in record["objects"]]
        for i, j in itertools.combinations(range(len(touched)), 2):
            assert not np.any(_dilate(touched[i], 1) & touched[j])  # at least a clean pixel between


def test_text_quads_inside_image_clockwise_and_apart_from_shapes(scenes):
    count = 0
    for _, record in scenes:
        w, h = record["width"], record["height"]
        shapes = np.zeros((h, w), dtype=bool)
        for obj in record["objects"]:
            shapes |= _mask(obj["polygon"], w, h)
        for text in record["texts"]:
            quad = _points(text["quad"])
            assert quad.shape == (4, 2)
            assert np.all(quad >= 0) and np.all(quad[:, 0] <= w) and np.all(quad[:, 1] <= h)
            assert _signed_area(quad) > 0
            # Starts at the text's top-left: the first corner is left of the second, above the fourth.
            assert quad[0, 0] < quad[1, 0] and quad[0, 1] < quad[3, 1]
            assert np.allclose(text["bbox"], [*quad.min(0), *quad.max(0)])
            assert not np.any(_mask(text["quad"], w, h) & shapes)
            count += 1
    assert count > 10


def test_text_ink_lies_inside_quads(scenes):
    """Dark pixels are text ink (inside a quad) or part of a shape; each quad holds some ink."""
    angled = 0
    for image, record in scenes:
        pixels = np.asarray(image).astype(np.int32)
        dark = pixels.sum(-1) < 400
        w, h = record["width"], record["height"]
        allowed = np.zeros((h, w), dtype=bool)
        for obj in record["objects"]:
            allowed |= _dilate(_touched(obj["polygon"], w, h), 1)
        for text in record["texts"]:
            quad_mask = _mask(text["quad"], w, h)
            assert dark[quad_mask].sum() > 5, (record["image"], text)
            allowed |= _dilate(quad_mask, 1)
            quad = _points(text["quad"])
            angled += abs(quad[0, 1] - quad[1, 1]) > 1
        assert not np.any(dark & ~allowed), record["image"]
    assert angled > 0


# --------------------------------------------------------------------------------------------------
# Captions and phrases
# --------------------------------------------------------------------------------------------------


def _names(caption: str, category: str) -> bool:
    return re.search(rf"\b({category}|{SHAPES[category].plural})\b", caption, flags=re.IGNORECASE) is not None


def test_captions_name_every_category_and_text(scenes):
    for _, record in scenes:
        captions = record["captions"]
        assert set(captions) == {"brief", "detailed", "more_detailed"}
        for level, caption in captions.items():
            for obj in record["objects"]:
                assert _names(caption, obj["category"]), (level, caption, obj["category"])
            assert caption.endswith(".") and caption[0].isupper()
        for text in record["texts"]:
            assert f'"{text["text"]}"' in captions["detailed"]
            assert f'"{text["text"]}"' in captions["more_detailed"]
            assert f'"{text["text"]}"' not in captions["brief"]
        assert record["background"]["description"] in captions["more_detailed"]
        assert len(captions["brief"]) < len(captions["detailed"]) < len(captions["more_detailed"])


def test_phrases_slice_the_brief_caption_and_cover_every_object(scenes):
    plural = 0
    for _, record in scenes:
        brief = record["captions"]["brief"]
        named: list[int] = []
        for phrase in record["phrases"]:
            assert brief[phrase["start"] : phrase["end"]] == phrase["phrase"]
            ids = phrase["object_ids"]
            assert ids == sorted(ids)
            categories = {record["objects"][i]["category"] for i in ids}
            assert len(categories) == 1 and _names(phrase["phrase"], categories.pop())
            if len(ids) > 1:
                plural += 1
                assert phrase["phrase"].lower().startswith(("two ", "three ", "four ", "five "))
            named += ids
        assert sorted(named) == list(range(len(record["objects"])))
    assert plural > 0


def test_plural_phrase_links_every_member():
    config = WorldConfig(image_size=128, min_objects=2, max_objects=2, categories=("star",), colors=("red",))
    _, record = SyntheticWorld(config, seed=0).scene(0)
    assert record["captions"]["brief"] == "Two red stars."
    assert record["phrases"] == [{"phrase": "Two red stars", "object_ids": [0, 1], "start": 0, "end": 13}]
    assert "There are two stars." in record["captions"]["more_detailed"]
    assert len({o["referring"] for o in record["objects"]}) == 2


def test_referring_expressions_are_unique(scenes):
    for _, record in scenes:
        expressions = [o["referring"] for o in record["objects"]]
        assert len(set(expressions)) == len(expressions)
        for obj in record["objects"]:
            assert obj["category"] in obj["referring"] and obj["color"] in obj["referring"]


# --------------------------------------------------------------------------------------------------
# Configuration and curriculum
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("low, high", [(1, 1), (2, 3), (0, 0)])
def test_object_count_follows_curriculum(low, high):
    world = SyntheticWorld(WorldConfig(image_size=128, min_objects=low, max_objects=high), seed=3)
    for index in range(6):
        _, record = world.scene(index)
        assert low <= len(record["objects"]) <= high
        validate_record(record)


def test_text_probability_bounds():
    never = SyntheticWorld(WorldConfig(image_size=128, text_probability=0.0), seed=0)
    always = SyntheticWorld(WorldConfig(image_size=128, text_probability=1.0, max_objects=1), seed=0)
    assert all(not never.scene(i)[1]["texts"] for i in range(5))
    assert all(1 <= len(always.scene(i)[1]["texts"]) <= 2 for i in range(5))


def test_default_world_uses_all_categories():
    assert len(CATEGORIES) >= 8 and len(COLORS) >= 8
    world = SyntheticWorld(seed=0)
    seen = {o["category"] for i in range(30) for o in world.scene(i)[1]["objects"]}
    assert seen == set(CATEGORIES)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"categories": ("circle", "blob")},
        {"colors": ()},
        {"min_objects": 3, "max_objects": 2},
        {"text_probability": 1.5},
        {"image_size": 8},
        {"sizes": ("huge",)},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        WorldConfig(**kwargs)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    index=st.integers(0, 10**6),
    max_objects=st.integers(1, 6),
    supersample=st.integers(1, 3),
)
def test_any_scene_is_valid(seed, index, max_objects, supersample):
    config = WorldConfig(image_size=128, max_objects=max_objects, supersample=supersample, text_probability=0.7)
    image, record = SyntheticWorld(config, seed).scene(index)
    validate_record(record)
    pixels = np.asarray(image)
    for i, obj in enumerate(record["objects"]):
        assert np.all(pixels[_interior(record, i)] == COLORS[obj["color"]])


# --------------------------------------------------------------------------------------------------
# Splits on disk
# --------------------------------------------------------------------------------------------------

SMALL = WorldConfig(image_size=96, max_objects=3, text_probability=0.5)


def test_write_and_read_split_round_trip(tmp_path):
    out = write_split(tmp_path / "train", 5, seed=2, config=SMALL, progress=True)
    assert out == tmp_path / "train"
    records = read_split(out)
    world = SyntheticWorld(SMALL, seed=2)
    assert [r["image"] for r in records] == [f"{i:06d}.png" for i in range(5)]
    for index, record in enumerate(records):
        image, expected = world.scene(index)
        assert record == expected
        with Image.open(out / record["image"]) as saved:
            assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(image))
    meta = json.loads((out / "world.json").read_text())
    assert meta["seed"] == 2 and meta["num_images"] == 5
    restored = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
    assert WorldConfig(**restored) == SMALL


def test_write_split_with_workers_is_identical(tmp_path):
    one = write_split(tmp_path / "one", 4, seed=5, config=SMALL)
    two = write_split(tmp_path / "two", 4, seed=5, config=SMALL, workers=2)
    assert (one / ANNOTATIONS_FILE).read_bytes() == (two / ANNOTATIONS_FILE).read_bytes()
    for name in ("000000.png", "000003.png"):
        assert (one / name).read_bytes() == (two / name).read_bytes()


def _corrupt(directory, line_number: int, edit) -> None:
    path = directory / ANNOTATIONS_FILE
    lines = path.read_text().splitlines()
    lines[line_number - 1] = edit(lines[line_number - 1])
    path.write_text("\n".join(lines) + "\n")


def _drop(key):
    def edit(line: str) -> str:
        record = json.loads(line)
        del record[key]
        return json.dumps(record)

    return edit


def _shift_phrase(line: str) -> str:
    record = json.loads(line)
    record["phrases"][0]["start"] += 1
    return json.dumps(record)


def _rename(line: str) -> str:
    record = json.loads(line)
    record["image"] = "missing.png"
    return json.dumps(record)


def _bad_polygon(line: str) -> str:
    record = json.loads(line)
    record["objects"][0]["polygon"] = record["objects"][0]["polygon"][:5]
    return json.dumps(record)


@pytest.mark.parametrize(
    "line_number, edit, message",
    [
        (2, lambda line: line[:-3], "malformed JSON"),
        (3, _drop("captions"), "missing field 'captions'"),
        (1, _shift_phrase, r"phrases\[0\]"),
        (2, _rename, "'missing.png' not found"),
        (3, _bad_polygon, r"objects\[0\]\.polygon"),
        (3, lambda line: "[1, 2]", "expected a JSON object"),
    ],
)
def test_read_split_names_file_and_line_of_bad_record(tmp_path, line_number, edit, message):
    out = write_split(tmp_path, 3, seed=0, config=SMALL)
    _corrupt(out, line_number, edit)
    with pytest.raises(AnnotationError, match=rf"annotations\.jsonl:{line_number}: .*{message}") as info:
        read_split(out)
    assert isinstance(info.value, ValueError)


def test_read_split_rejects_duplicates_and_skips_blank_lines(tmp_path):
    out = write_split(tmp_path, 2, seed=0, config=SMALL)
    path = out / ANNOTATIONS_FILE
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n\n" + lines[1] + "\n\n")
    assert len(read_split(out)) == 2
    path.write_text(lines[0] + "\n" + lines[0] + "\n")
    with pytest.raises(AnnotationError, match=r"jsonl:2: image '000000.png' already listed on line 1"):
        read_split(out)


def test_read_split_without_annotations_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations.jsonl"):
        read_split(tmp_path)
