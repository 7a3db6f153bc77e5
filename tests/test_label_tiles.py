"""Tiles: a grid of overlapping full-resolution crops whose boxes are moved back and merged, so the
small objects of large images are found."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from florence2 import Florence2
from florence2.data.synthetic import WorldConfig, generate_mosaic, generate_scene
from florence2.errors import TaskError
from florence2.label import DatasetError, DatasetStore, label
from florence2.label.tiles import Tiling, cut, from_tile, merge_tiles
from florence2.scoring import box_iou

# --- the grid ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("grid", "size", "overlap"), [("2x2", (256, 256), 0.2), ("3x2", (1000, 601), 0.25),
                                                        ("4x1", (97, 31), 0.0), ("2x3", (5, 7), 0.4),
                                                        ("64x1", (10, 3), 0.2), ("8x8", (1, 1), 0.3)])  # fmt: skip
def test_crops_cover_the_image_and_neighbours_share_the_overlap(grid, size, overlap):
    tiling = Tiling.parse(grid, overlap)
    rects = tiling.rects(size)
    assert len(rects) == tiling.cols * tiling.rows and tiling.name == grid
    covered = np.zeros((size[1], size[0]), dtype=bool)
    for x0, y0, x1, y1 in rects:
        assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    first, second = rects[0], rects[1]  # neighbours in the first row
    width = first[2] - first[0]
    if size[0] >= 50:
        assert abs((first[2] - second[0]) - overlap * width) <= 1.0  # shared columns
        assert abs((second[2] - second[0]) - width) <= 1.0  # crops of one size


@pytest.mark.parametrize("text", ["2", "2x", "x2", "axb", "2x2x2", "-1x2", ""])
def test_a_malformed_grid_is_refused(text):
    with pytest.raises(ValueError, match="COLSxROWS"):
        Tiling.parse(text)


@pytest.mark.parametrize(("cols", "rows", "overlap", "match"), [
    (1, 1, 0.2, "2 to 64 tiles"), (9, 8, 0.2, "2 to 64 tiles"), (0, 2, 0.2, "whole number"),
    (2, 2, 0.5, "overlap"), (2, 2, -0.1, "overlap"), (2, 2, True, "overlap"), (2.0, 2, 0.2, "whole number"),
])  # fmt: skip
def test_bad_tilings_are_refused(cols, rows, overlap, match):
    with pytest.raises(ValueError, match=match):
        Tiling(cols, rows, overlap)


@pytest.mark.parametrize(("size", "grid"), [
    ((128, 128), (1, 1)), ((191, 100), (1, 1)), ((192, 128), (2, 1)), ((256, 256), (2, 2)), ((768, 300), (6, 2)),
    ((20000, 9000), (11, 5)), ((100000, 10), (64, 1)),
])  # fmt: skip
def test_auto_gives_about_one_crop_per_model_input_and_none_to_a_small_image(size, grid):
    tiling = Tiling.parse("auto").for_side(128)
    assert tiling.name == "auto" and tiling.grid(size) == grid
    assert len(tiling.rects(size)) == (0 if grid == (1, 1) else grid[0] * grid[1])
    with pytest.raises(ValueError, match="input size"):
        Tiling.parse("AUTO").rects(size)


def test_a_box_on_an_inner_edge_is_cut_and_one_on_the_image_edge_is_not():
    size, rect = (200, 100), (80, 0, 200, 60)  # a crop on the right, top half
    assert cut([80.0, 10.0, 120.0, 30.0], rect, size)  # on its left edge, inside the image
    assert cut([100.0, 20.0, 140.0, 60.0], rect, size)  # on its bottom edge, inside the image
    assert not cut([150.0, 0.0, 200.0, 30.0], rect, size)  # on its top and right edges: the image's
    assert not cut([90.0, 10.0, 120.0, 50.0], rect, size)
    assert from_tile([0.0, 5.0, 30.0, 70.0], rect) == [80.0, 5.0, 110.0, 60.0]  # moved, clipped to the crop


def test_merging_keeps_the_best_box_of_each_object_and_every_label():
    whole = [([10.0, 10.0, 50.0, 50.0], "cat", 0.4)]
    tile = [([11.0, 9.0, 51.0, 49.0], "cat", 0.7), ([12.0, 10.0, 50.0, 50.0], "dog", 0.2)]
    tile.append(([70, 70, 90, 90], "cat", None))
    merged = merge_tiles([whole, tile])
    assert merged == [([11.0, 9.0, 51.0, 49.0], "cat", 0.7), ([12.0, 10.0, 50.0, 50.0], "dog", 0.2),
                      ([70, 70, 90, 90], "cat", None)]  # fmt: skip
    assert merge_tiles([[], []]) == []


def test_a_mosaic_holds_its_scenes_and_their_objects_moved_into_their_cells():
    image, objects = generate_mosaic(np.random.default_rng(3), 2, WorldConfig(image_size=64))
    assert image.size == (128, 128) and objects
    rng = np.random.default_rng(3)
    expected = []
    for row in range(2):
        for col in range(2):
            scene, record = generate_scene(rng, WorldConfig(image_size=64))
            crop = image.crop((col * 64, row * 64, col * 64 + 64, row * 64 + 64))
            assert np.array_equal(np.asarray(crop), np.asarray(scene))
            for obj in record["objects"]:
                x0, y0, x1, y1 = obj["bbox"]
                expected.append((obj["category"], [x0 + col * 64, y0 + row * 64, x1 + col * 64, y1 + row * 64]))
    assert [(o["category"], o["bbox"]) for o in objects] == expected
    with pytest.raises(ValueError, match="grid"):
        generate_mosaic(np.random.default_rng(0), 0)


# --- labeling with tiles -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor() -> Florence2:
    return Florence2.from_pretrained()


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory) -> tuple[Path, dict[str, list]]:
    """Four 256-pixel mosaics of four 128-pixel scenes: objects half the size the embedded model knows."""
    folder = tmp_path_factory.mktemp("mosaics")
    rng, truth = np.random.default_rng(777), {}
    for k in range(4):
        image, truth[f"{k:05d}.png"] = generate_mosaic(rng, 2, WorldConfig(image_size=128))
        image.save(folder / f"{k:05d}.png")
    return folder, truth


def recall(dataset: Path, truth: dict[str, list]) -> float:
    """Share of true objects with a box of their category at IoU >= 0.5."""
    hits = total = 0
    with DatasetStore(dataset) as store:
        for record in store.records():
            od = record["results"]["<OD>"]
            for obj in truth[Path(record["source"]["path"]).name]:
                total += 1
                same = [b for b, lab in zip(od["bboxes"], od["labels"]) if lab == obj["category"]]
                hits += bool(same) and box_iou([obj["bbox"]], same).max() >= 0.5
    return hits / total


def test_tiles_find_the_small_objects_a_plain_pass_misses(mosaics, predictor, tmp_path):
    folder, truth = mosaics
    plain = label(folder, tmp_path / "plain", model=predictor, preset="detect")
    tiled = label(folder, tmp_path / "tiled", model=predictor, preset="detect", tiles="2x2")
    assert plain.labeled == tiled.labeled == 4
    plain_recall, tiled_recall = recall(tmp_path / "plain", truth), recall(tmp_path / "tiled", truth)
    print(f"recall at IoU 0.5: plain {plain_recall:.3f}, tiles {tiled_recall:.3f}")
    assert tiled_recall >= 0.5 and tiled_recall >= plain_recall + 0.3, (plain_recall, tiled_recall)
    with DatasetStore(tmp_path / "tiled") as store:
        run = store.runs()[0]["settings"]
        assert (run["tiles"], run["tile_overlap"]) == ("2x2", 0.2)
        for record in store.records():
            od = record["results"]["<OD>"]
            assert len(od["bboxes"]) == len(od["labels"]) == len(od["scores"])
            assert all(0 <= x0 <= x1 <= 256 and 0 <= y0 <= y1 <= 256 for x0, y0, x1, y1 in od["bboxes"])
            assert all(0.0 < s <= 1.0 for s in od["scores"])
            # one box an object: no two boxes of one label overlap by more than the merge IoU
            for k, box in enumerate(od["bboxes"]):
                for j in range(k):
                    if od["labels"][j] == od["labels"][k]:
                        assert box_iou([box], [od["bboxes"][j]])[0, 0] <= 0.5
    # the same images with another tiling are another run's work
    with pytest.raises(DatasetError, match="tiles"):
        label(folder, tmp_path / "tiled", model=predictor, preset="detect", tiles="3x3")


def test_auto_tiles_the_large_images_of_a_mixed_folder_and_leaves_the_small_ones(mosaics, predictor, tmp_path):
    folder, _ = mosaics
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("00000.png", "00001.png"):
        (mixed / name).write_bytes((folder / name).read_bytes())  # 256 px: 2 x 2 crops at a 128-pixel input
    rng = np.random.default_rng(11)
    for k in range(2):
        generate_scene(rng, WorldConfig(image_size=128))[0].save(mixed / f"scene{k}.png")  # 128 px: none
    for name, tiles in (("auto", "auto"), ("grid", "2x2"), ("plain", None)):
        assert label(mixed, tmp_path / name, model=predictor, preset="detect", tiles=tiles).labeled == 4
    found = {}
    for name in ("auto", "grid", "plain"):
        with DatasetStore(tmp_path / name) as store:
            found[name] = {Path(r["source"]["path"]).name: r["results"]["<OD>"] for r in store.records()}
    for image, boxes in found["auto"].items():
        same_as = "grid" if image.startswith("0000") else "plain"
        assert boxes["labels"] == found[same_as][image]["labels"], image
        assert np.allclose(boxes["bboxes"], found[same_as][image]["bboxes"]), image
    assert any(found["grid"][i]["bboxes"] != found["plain"][i]["bboxes"] for i in ("scene0.png", "scene1.png"))


def test_tiles_with_an_ontology_and_the_other_tasks_untouched(mosaics, predictor, tmp_path):
    folder, _ = mosaics
    image = folder / "00000.png"
    tiled = label([image], tmp_path / "t", model=predictor, tasks=["CAPTION"], ontology="circle=round", tiles="2x2")
    plain = label([image], tmp_path / "p", model=predictor, tasks=["CAPTION"], ontology="circle=round")
    assert tiled.labeled == plain.labeled == 1
    records = [next(DatasetStore(tmp_path / name).records())["results"] for name in ("t", "p")]
    assert records[0]["<CAPTION>"] == records[1]["<CAPTION>"]  # a caption is of the whole image
    boxes = records[0]["<OPEN_VOCABULARY_DETECTION>"]
    assert set(boxes["bboxes_labels"]) <= {"round"}
    assert len(boxes["bboxes"]) == len(boxes["bboxes_scores"])


def test_a_plan_that_tiles_nothing_or_a_bad_tiling_is_refused(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    with pytest.raises(TaskError, match="tiles find boxes"):
        label(tmp_path / "a.png", tmp_path / "ds", preset="caption", tiles="2x2")
    with pytest.raises(TaskError, match="COLSxROWS"):
        label(tmp_path / "a.png", tmp_path / "ds", preset="detect", tiles="2by2")
    with pytest.raises(TaskError, match="overlap"):
        label(tmp_path / "a.png", tmp_path / "ds", preset="detect", tiles="2x2", tile_overlap=0.5)
    assert not (tmp_path / "ds").exists()


def test_the_command_takes_tiles(mosaics, tmp_path):
    import subprocess
    import sys

    folder, _ = mosaics
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "florence2.cli", "label", str(folder / "00001.png"), "--out", str(tmp_path / "ds")]
    result = subprocess.run([*command, "--preset", "detect", "--tiles", "2x2", "--json"], capture_output=True,
                            text=True, cwd=root, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["labeled"] == 1
    bad = subprocess.run([*command, "--tiles", "2x2x2"], capture_output=True, text=True, cwd=root, timeout=300)
    assert bad.returncode == 2 and "error: tiles are COLSxROWS" in bad.stderr
