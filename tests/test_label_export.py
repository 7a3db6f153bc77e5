"""Exports of labeled records (COCO, YOLO, JSON lines, captions, Parquet) open in their own tools, and
the JSON lines read back into fine-tuning examples whose targets parse back into the labels."""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from florence2.coords import NUM_BINS
from florence2.data.formats import FORMATS, detect_format, load_data, read_captions, read_coco, read_yolo
from florence2.errors import AnnotationError
from florence2.label.export import EXPORT_FORMATS, ExportError, export_records
from florence2.parsing import post_process_generation

OD, OVD = "<OD>", "<OPEN_VOCABULARY_DETECTION>"
BOXES = (OD, OVD, "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>", "<CAPTION_TO_PHRASE_GROUNDING>")
QUAD = [4.0, 4.0, 24.0, 4.0, 24.0, 12.0, 4.0, 12.0]
TRIANGLE = [2.0, 2.0, 20.0, 2.0, 20.0, 18.0]
GROUNDING, OCR_REGIONS = "<CAPTION_TO_PHRASE_GROUNDING>", "<OCR_WITH_REGION>"


# --- records ----------------------------------------------------------------------------------------------


def write_png(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def boxes_result(boxes: list[list[float]], labels: list[str], key: str = "labels") -> dict:
    scores = [round(0.9 - 0.1 * k, 2) for k in range(len(boxes))]
    if key == "bboxes_labels":
        empty: dict = {"polygons": [], "polygons_labels": [], "polygons_scores": []}
        return {"bboxes": boxes, "bboxes_labels": labels, "bboxes_scores": scores, **empty}
    return {"bboxes": boxes, "labels": labels, "scores": scores}


def record_for(path: Path, size: tuple[int, int], k: int) -> dict:
    """A record as the store yields it; image k has k % 4 objects (0: none found)."""
    w, h = size
    shapes = [
        ("car", [2.0, 3.0, w / 2, h / 2]),
        ("dog", [w / 3, h / 4, w - 1.0, h - 2.0]),
        ("car", [5.0, h / 2, 20.0, h]),
    ]
    found = shapes[: k % 4]
    boxes, labels = [list(b) for _, b in found], [n for n, _ in found]
    caption = " and ".join(f"a {n}" for n in labels).capitalize() + "." if labels else "An empty street."
    results = {
        "<CAPTION>": caption,
        "<DETAILED_CAPTION>": caption + " Seen from above.",
        OD: boxes_result(boxes, labels),
        OVD: boxes_result(boxes, labels, "bboxes_labels"),
        "<DENSE_REGION_CAPTION>": boxes_result(boxes, [f"small {n}" for n in labels]),
        "<REGION_PROPOSAL>": boxes_result(boxes, [""] * len(boxes)),
        GROUNDING: {**boxes_result(boxes, [f"a {n}" for n in labels]), "caption": caption},
        OCR_REGIONS: {
            "quad_boxes": [[4.0, 4.0, 24.0, 4.0, 24.0, 12.0, 4.0, 12.0]],
            "labels": ["STOP"],
            "scores": [0.5],
        },
        "<OCR>": "STOP\nGO",
        "<REFERRING_EXPRESSION_SEGMENTATION>": {
            "polygons": [[[2.0, 2.0, 20.0, 2.0, 20.0, 18.0]]],
            "labels": [""],
            "scores": [0.4],
        },
        "sequence_scores": {OD: 0.5, "<CAPTION>": 0.9},
        "regions": [{"bbox": b, "score": 0.9, "tasks": [OD], "category": n} for n, b in found],
    }
    if k == 1:
        results["<MORE_DETAILED_CAPTION>"] = caption + " A long paragraph about it."
    image_id = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"id": image_id, "source": {"path": str(path)}, "width": w, "height": h, "results": results, "run": 1}


SIZES = [(64, 48), (80, 60), (50, 70), (96, 64), (40, 40), (72, 54)]


@pytest.fixture
def records(tmp_path: Path) -> list[dict]:
    folder = tmp_path / "photos"
    folder.mkdir()
    out = []
    for k, size in enumerate(SIZES):
        path = write_png(folder / f"photo{k}.png", size, (30 * k, 200 - 20 * k, 90))
        out.append(record_for(path, size, k))
    return out


def by_id(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in records}


# --- COCO ---------------------------------------------------------------------------------------------------


def test_coco_loads_in_pycocotools_as_ground_truth_and_results_and_scores_ap_1(records, tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    summary = export_records(records, tmp_path / "coco", "coco", task="OD")
    path = tmp_path / "coco" / "annotations" / "instances.json"
    assert summary["files"] == ["annotations/instances.json"] and summary["task"] == OD
    assert summary["categories"] == ["car", "dog"] and summary["splits"]["train"]["images"] == len(records)
    gt = COCO(str(path))
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == ["car", "dog"] and gt.getCatIds() == [1, 2]
    names = {r["id"][:16] + ".png": r for r in records}
    for image in gt.dataset["images"]:
        record = names[image["file_name"]]
        assert (image["width"], image["height"]) == (record["width"], record["height"])
        assert (tmp_path / "coco" / "images" / image["file_name"]).is_symlink()
        anns = gt.loadAnns(gt.getAnnIds(imgIds=image["id"]))
        expected = record["results"][OD]
        assert [a["score"] for a in anns] == expected["scores"]
        for ann, box, label in zip(anns, expected["bboxes"], expected["labels"]):
            x, y, w, h = ann["bbox"]
            assert [x, y, x + w, y + h] == pytest.approx(box) and ann["area"] == pytest.approx(
                (box[2] - box[0]) * (box[3] - box[1]), abs=1e-3
            )
            assert gt.cats[ann["category_id"]]["name"] == label and ann["iscrowd"] == 0
    assert len(gt.dataset["annotations"]) == sum(k % 4 for k in range(len(SIZES)))
    results = gt.loadRes(json.loads(path.read_text())["annotations"])  # loadRes changes what it is given
    evaluation = COCOeval(gt, results, "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)
    # florence2's own COCO reader takes it for fine-tuning
    examples = read_coco(path, tmp_path / "coco" / "images")
    assert len(examples) == sum(1 for k in range(len(SIZES)) if k % 4) and {e.task for e in examples} == {OD}


def test_coco_takes_the_default_box_task_and_polygons_become_segmentations(records, tmp_path):
    summary = export_records(records, tmp_path / "ovd", "coco")
    assert summary["task"] == OVD  # the first of the default order present
    summary = export_records(records, tmp_path / "seg", "coco", task="<REFERRING_EXPRESSION_SEGMENTATION>")
    data = json.loads((tmp_path / "seg" / "annotations" / "instances.json").read_text())
    assert summary["categories"] == ["object"] and len(data["annotations"]) == len(records)
    ann = data["annotations"][0]
    assert ann["segmentation"] == [TRIANGLE] and ann["bbox"] == [2.0, 2.0, 18.0, 16.0]
    assert ann["area"] == pytest.approx(18 * 16 / 2) and ann["score"] == 0.4


def test_records_without_the_task_and_broken_boxes_are_left_out_and_said(records, tmp_path):
    del records[0]["results"][OD]
    records[1]["results"][OD]["bboxes"][0] = [30.0, 3.0, 2.0, 24.0]  # x1 < x0
    summary = export_records(records, tmp_path / "coco", "coco", task=OD)
    reasons = {(s["id"], s["reason"]) for s in summary["skipped"]}
    assert (records[0]["id"], "no <OD> result") in reasons
    assert (records[1]["id"], "1 <OD> regions without a box") in reasons
    data = json.loads((tmp_path / "coco" / "annotations" / "instances.json").read_text())
    assert len(data["images"]) == len(records) - 1


# --- YOLO -----------------------------------------------------------------------------------------------------


def test_yolo_layout_data_yaml_and_label_files(records, tmp_path):
    yaml = pytest.importorskip("yaml")
    out = tmp_path / "yolo"
    summary = export_records(records, out, "yolo", task=OD, val_fraction=0.3, seed=1)
    config = yaml.safe_load((out / "data.yaml").read_text())
    assert config["path"] == str(out.absolute()) and (config["train"], config["val"]) == ("images/train", "images/val")
    names = config["names"]
    assert names == {0: "car", 1: "dog"} and config["nc"] == 2
    records_by_start = {r["id"][:16]: r for r in records}
    counted = 0
    for split in ("train", "val"):
        images = sorted(p.stem for p in (out / "images" / split).iterdir())
        labels = sorted(p.stem for p in (out / "labels" / split).iterdir())
        assert images == labels and len(images) == summary["splits"][split]["images"] > 0
        for stem in labels:
            record = records_by_start[stem]
            w, h = record["width"], record["height"]
            lines = (out / "labels" / split / f"{stem}.txt").read_text().splitlines()
            expected = record["results"][OD]
            assert len(lines) == len(expected["bboxes"])  # none found: an empty file, a background image
            for line, box, label in zip(lines, expected["bboxes"], expected["labels"]):
                class_id, *values = line.split()
                assert names[int(class_id)] == label and all(0.0 <= float(v) <= 1.0 for v in values)
                cx, cy, bw, bh = (float(v) for v in values)
                x1, y1 = min(box[2], w), min(box[3], h)
                assert (cx * w, cy * h, bw * w, bh * h) == pytest.approx(
                    ((box[0] + x1) / 2, (box[1] + y1) / 2, x1 - box[0], y1 - box[1]), abs=1e-3
                )
            counted += 1
    assert counted == len(records)
    assert len(read_yolo(out, "train")) + len(read_yolo(out, "val")) == sum(1 for k in range(len(SIZES)) if k % 4)


def test_yolo_without_a_split_validates_on_its_train_folder(records, tmp_path):
    export_records(records, tmp_path / "yolo", "yolo")
    text = (tmp_path / "yolo" / "data.yaml").read_text()
    assert "train: images/train\nval: images/train\n" in text and not (tmp_path / "yolo" / "images" / "val").exists()


# --- JSON lines and fine-tuning ----------------------------------------------------------------------------


def parsed(example, size):
    return post_process_generation(example.target, example.task, size)[example.task]


def assert_boxes_close(got: list[list[float]], expected: list[list[float]], size: tuple[int, int]) -> None:
    tolerance = [size[0] / NUM_BINS, size[1] / NUM_BINS] * 2  # one quantization bin
    assert len(got) == len(expected)
    for box in expected:
        assert any(all(abs(a - b) <= t for a, b, t in zip(g, box, tolerance)) for g in got), (box, got)


def test_jsonl_reads_back_into_examples_whose_targets_parse_into_the_labels(records, tmp_path):
    out = tmp_path / "jsonl"
    summary = export_records(records, out, "jsonl")
    path = out / "labels.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["id"] for line in lines] == sorted(r["id"] for r in records)
    first = lines[0]
    assert set(first) == {"id", "source", "width", "height", "image", "run", "results", "sequence_scores", "regions"}
    assert "sequence_scores" not in first["results"] and (path.parent / first["image"]).is_file()
    assert summary["splits"]["train"]["regions"] == sum(
        len(r["results"][t]["bboxes"])
        for r in records
        for t in (OD, OVD, "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>", GROUNDING)
    ) + 2 * len(records)  # one OCR quad and one polygon each
    assert detect_format([str(path)]) == "labels"
    notes: list[str] = []
    examples = load_data(str(path), notes=notes)
    assert any("<REFERRING_EXPRESSION_SEGMENTATION>" in n and "expression" in n for n in notes)
    sizes = {str(out / line["image"]): (line["width"], line["height"]) for line in lines}
    truth = {str(out / line["image"]): line["results"] for line in lines}
    tasks = {e.task for e in examples}
    assert tasks == {
        "<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<OCR>", OCR_REGIONS, OD, OVD,
        "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>", GROUNDING,
    }  # fmt: skip
    for example in examples:
        size, results = sizes[example.image], truth[example.image]
        answer = parsed(example, size)
        if example.task in (OD, "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>", GROUNDING):
            assert_boxes_close(answer["bboxes"], results[example.task]["bboxes"], size)
            assert sorted(answer["labels"]) == sorted(results[example.task]["labels"])
        elif example.task == OVD:  # one example per class, asked by its name
            name = example.prompt.removeprefix("Locate ").removesuffix(" in the image.")
            mine = [b for b, n in zip(results[OVD]["bboxes"], results[OVD]["bboxes_labels"]) if n == name]
            assert_boxes_close(answer["bboxes"], mine, size)
            assert set(answer["bboxes_labels"]) == {name}
        elif example.task == OCR_REGIONS:
            assert answer["labels"] == ["STOP"]
            assert_boxes_close([answer["quad_boxes"][0][:4]], [results[OCR_REGIONS]["quad_boxes"][0][:4]], size)
        else:
            assert answer == results[example.task]
        if example.task == GROUNDING:
            assert example.prompt.endswith(results[GROUNDING]["caption"])
    # the prefix, a task choice and a score threshold
    only = load_data(f"labels:{path}@tasks=OD,min_score=0.85")
    assert {e.task for e in only} == {OD}
    assert all(len(parsed(e, sizes[e.image])["bboxes"]) == 1 for e in only)  # the 0.8 and 0.7 boxes dropped


def test_finetune_runs_on_a_jsonl_export(records, tmp_path, capsys):
    from florence2.cli import main

    export_records(records, tmp_path / "jsonl", "jsonl", val_fraction=0.3)
    data = str(tmp_path / "jsonl" / "train.jsonl")
    argv = ["finetune", "--data", data, "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "2"]
    assert main([*argv, "--no-progress"]) == 0
    assert f"labels:{data}:" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint-last" / "finetune.json").is_file()


def test_the_labels_reader_drops_bad_regions_and_refuses_malformed_lines(tmp_path):
    write_png(tmp_path / "a.png", (40, 30), (1, 2, 3))
    line = {
        "id": "a",
        "source": {},
        "width": 40,
        "height": 30,
        "image": "a.png",
        "results": {
            OD: boxes_result(
                [[1.0, 1.0, 20.0, 20.0], [30.0, 2.0, 10.0, 9.0], [2.0, 2.0, 9.0, 9.0]], ["cat", "cat", " "]
            ),
            GROUNDING: boxes_result([[1.0, 1.0, 9.0, 9.0]], ["a cat"]),  # no caption
            "<OCR>": "x < y",
            "<FANCY>": "?",
        },
    }
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps(line) + "\n" + json.dumps({**line, "id": "b", "image": None}) + "\n")
    notes: list[str] = []
    examples = load_data(f"labels:{path}", notes=notes)
    assert [e.task for e in examples] == [OD] and examples[0].target.count("<loc_") == 4
    text = "\n".join(notes)
    for said in ("1 regions dropped with a box that is malformed", "1 regions dropped with an empty label"):
        assert said in text
    assert "does not hold the caption" in text and "<FANCY>: 1 results left out: it is no task" in text
    assert "<OCR>: 1 results left out: the sample builders refuse it" in text
    assert "1 lines without an image file" in text
    line["results"][OD]["labels"] = ["cat"]
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(AnnotationError, match="differ in length"):
        load_data(f"labels:{path}")
    with pytest.raises(AnnotationError, match="min_score"):
        load_data(f"labels:{path}@min_score=2")


def test_the_prompt_suffix_jsonl_is_still_told_apart(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"image": "a.png", "prefix": "<OD>", "suffix": "x"}) + "\n")
    assert detect_format([str(path)]) == "jsonl" and "labels" in FORMATS


# --- captions and Parquet -----------------------------------------------------------------------------------


def test_captions_read_back_by_the_captions_reader(records, tmp_path):
    out = tmp_path / "captions"
    summary = export_records(records, out, "captions")
    assert summary["task"] == "<MORE_DETAILED_CAPTION>"  # the longest present, on one image only
    assert len(summary["skipped"]) == len(records) - 1
    lines = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["caption"].endswith("A long paragraph about it.")
    summary = export_records(records, tmp_path / "short", "captions", task="CAPTION", val_fraction=0.3)
    assert summary["task"] == "<CAPTION>" and not summary["skipped"]
    count = 0
    for split in ("train", "val"):
        folder = tmp_path / "short" / split
        for example in read_captions(folder):
            record = by_id(records)[next(r["id"] for r in records if r["id"].startswith(Path(example.image).stem))]
            assert example.target == record["results"]["<CAPTION>"]
            assert Path(example.image).with_suffix(".txt").is_file()
            count += 1
        assert len(read_captions(folder / "captions.jsonl")) == len(list(folder.glob("*.txt")))
    assert count == len(records)


def test_parquet_rows_and_columns(records, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    summary = export_records(records, tmp_path / "pq", "parquet")
    table = pq.read_table(tmp_path / "pq" / "labels.parquet")
    assert summary["files"] == ["labels.parquet"] and table.num_rows == len(records)
    assert table.column_names == [
        "id", "source", "width", "height", "image", "results", "extras",
        "caption", "detailed_caption", "more_detailed_caption", "num_regions",
    ]  # fmt: skip
    for row in table.to_pylist():
        record = by_id(records)[row["id"]]
        assert json.loads(row["source"]) == record["source"] and (row["width"], row["height"]) == (
            record["width"],
            record["height"],
        )
        results = json.loads(row["results"])
        assert results[OD] == record["results"][OD] and "sequence_scores" not in results
        assert json.loads(row["extras"])["sequence_scores"] == record["results"]["sequence_scores"]
        assert row["caption"] == record["results"]["<CAPTION>"]
        assert row["more_detailed_caption"] == record["results"].get("<MORE_DETAILED_CAPTION>")
        assert row["num_regions"] == 5 * len(record["results"][OD]["bboxes"]) + 2
        assert (tmp_path / "pq" / row["image"]).is_file()


# --- splits and images -----------------------------------------------------------------------------------


def split_ids(folder: Path) -> dict[str, set[str]]:
    return {
        s: {json.loads(x)["id"] for x in (folder / f"{s}.jsonl").read_text().splitlines()} for s in ("train", "val")
    }


def test_splits_are_deterministic_disjoint_and_independent_of_order(records, tmp_path):
    export_records(records, tmp_path / "a", "jsonl", val_fraction=0.4, seed=3)
    shuffled = records[::-1]
    random.Random(0).shuffle(shuffled)
    export_records(shuffled, tmp_path / "b", "jsonl", val_fraction=0.4, seed=3)
    a, b = split_ids(tmp_path / "a"), split_ids(tmp_path / "b")
    assert a == b and not a["train"] & a["val"] and a["train"] | a["val"] == set(by_id(records))
    assert a["train"] and a["val"]
    for seed in range(4):
        export_records(records, tmp_path / f"s{seed}", "jsonl", val_fraction=0.4, seed=seed)
    assert any(split_ids(tmp_path / f"s{seed}") != a for seed in range(4))  # the seed moves images


def test_image_modes_link_copy_and_none(records, tmp_path):
    export_records(records, tmp_path / "copy", "coco", images="copy")
    originals = {r["id"][:16] + ".png": Path(r["source"]["path"]) for r in records}
    for name, original in originals.items():
        copied = tmp_path / "copy" / "images" / name
        assert not copied.is_symlink() and copied.read_bytes() == original.read_bytes()
        assert (tmp_path / "copy" / "images").is_dir()
    summary = export_records(records, tmp_path / "none", "coco", images="none")
    data = json.loads((tmp_path / "none" / "annotations" / "instances.json").read_text())
    assert {i["file_name"] for i in data["images"]} == {str(p) for p in originals.values()}
    assert summary["image_files"] == 0 and not (tmp_path / "none" / "images").exists()
    export_records(records, tmp_path / "nonel", "jsonl", images="none")
    lines = [json.loads(x) for x in (tmp_path / "nonel" / "labels.jsonl").read_text().splitlines()]
    assert {line["image"] for line in lines} == {str(p) for p in originals.values()}
    assert len(load_data(str(tmp_path / "nonel" / "labels.jsonl"))) > 0


def write_video(path: Path, frames: int = 6, size: tuple[int, int] = (32, 24)) -> Path:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4" if "mpeg4" in av.codecs_available else "libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            image = Image.new("RGB", size, (40 * i, 100, 255 - 40 * i))
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode())
    return path


def test_tar_members_and_video_frames_are_written_as_files(tmp_path):
    from florence2.label.sources import iter_sources

    member = tmp_path / "inner.jpg"
    Image.new("RGB", (30, 20), (10, 200, 10)).save(member)
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        tar.add(member, arcname="x/1.jpg")
    write_video(tmp_path / "clip.mp4")
    items = list(iter_sources([tmp_path / "shard.tar", tmp_path / "clip.mp4"], video_stride=3))
    assert [bool("member" in i.source) for i in items] == [True, False, False]
    records = []
    for k, item in enumerate(items):
        data = item.read()
        image = Image.open(io.BytesIO(data)) if isinstance(data, bytes) else data
        content = data if isinstance(data, bytes) else image.tobytes()
        box = boxes_result([[1.0, 1.0, 10.0 + k, 9.0]], ["thing"])
        records.append(
            {"id": hashlib.sha256(content).hexdigest(), "source": item.source, "width": image.size[0],
             "height": image.size[1], "results": {OD: box}}
        )  # fmt: skip
    summary = export_records(records, tmp_path / "out", "yolo")
    written = sorted((tmp_path / "out" / "images" / "train").iterdir())
    assert summary["image_files"] == 3 and not summary["skipped"]
    assert sorted(p.suffix for p in written) == [".jpg", ".png", ".png"]
    jpg = next(p for p in written if p.suffix == ".jpg")
    assert jpg.read_bytes() == member.read_bytes() and not jpg.is_symlink()
    for frame in (p for p in written if p.suffix == ".png"):
        assert Image.open(frame).size == (32, 24)
    summary = export_records(records, tmp_path / "none", "jsonl", images="none")
    assert [s["reason"].split(" (")[0] for s in summary["skipped"]] == ["its image is no file of its own"] * 3


# --- Label Studio -----------------------------------------------------------------------------------------


def test_labelstudio_tasks_hold_the_regions_as_scored_predictions_in_percent(tmp_path):
    import xml.etree.ElementTree as ET

    a, b = write_png(tmp_path / "a.png", (100, 50), (1, 2, 3)), write_png(tmp_path / "b.png", (40, 40), (4, 5, 6))
    odd = 'a "big" <thing> & co'
    records = [
        {"id": "a" * 64, "source": {"path": str(a)}, "width": 100, "height": 50,
         "results": {OD: {"bboxes": [[10.0, 5.0, 60.0, 30.0], [0.0, 0.0, 100.0, 50.0]], "labels": ["car", odd],
                          "scores": [0.8, 0.3]}}},
        {"id": "b" * 64, "source": {"path": str(b)}, "width": 40, "height": 40,
         "results": {OD: {"bboxes": [], "labels": [], "scores": []}}},
    ]  # fmt: skip
    summary = export_records(records, tmp_path / "ls", "labelstudio", images="copy")
    assert summary["task"] == OD and summary["splits"]["train"] == {"images": 2, "regions": 2}
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    first, second = sorted(tasks, key=lambda t: t["data"]["florence2_id"])
    assert first["data"]["image"] == "/data/local-files/?d=images/" + "a" * 16 + ".png"
    assert (tmp_path / "ls" / "images" / ("a" * 16 + ".png")).read_bytes() == a.read_bytes()
    (prediction,) = first["predictions"]
    assert prediction["score"] == 0.3 and prediction["model_version"] == "florence2 <OD>"
    car, whole = prediction["result"]
    assert car["type"] == "rectanglelabels" and (car["from_name"], car["to_name"]) == ("label", "image")
    assert car["value"] == {"x": 10.0, "y": 10.0, "width": 50.0, "height": 50.0, "rotation": 0,
                            "rectanglelabels": ["car"]}  # fmt: skip
    assert (car["original_width"], car["original_height"], car["score"]) == (100, 50, 0.8)
    assert whole["value"]["rectanglelabels"] == [odd] and whole["id"] != car["id"]
    assert second["predictions"][0]["result"] == [] and "score" not in second["predictions"][0]
    config = ET.fromstring((tmp_path / "ls" / "label_config.xml").read_text())
    assert [c.tag for c in config] == ["Image", "RectangleLabels"]
    assert [label.get("value") for label in config.find("RectangleLabels")] == sorted(["car", odd])


def test_labelstudio_polygons_are_polygon_regions_and_splits_are_files(tmp_path):
    import xml.etree.ElementTree as ET

    res = "<REFERRING_EXPRESSION_SEGMENTATION>"
    records = []
    for k in range(6):
        path = write_png(tmp_path / f"{k}.png", (200, 100), (k, k, k))
        polygon = [20.0, 10.0, 120.0, 10.0, 120.0, 90.0]
        results = {res: {"polygons": [[polygon]], "labels": [""], "scores": [0.5]}}
        source = {"path": str(path)}
        records.append({"id": f"{k:064d}", "source": source, "width": 200, "height": 100, "results": results})
    summary = export_records(records, tmp_path / "ls", "labelstudio", task=res, val_fraction=0.5, seed=1)
    names = sorted(p.name for p in (tmp_path / "ls").iterdir())
    assert names == ["images", "label_config.xml", "tasks_train.json", "tasks_val.json"]
    counts = summary["splits"]
    assert counts["train"]["images"] + counts["val"]["images"] == 6 and counts["train"]["images"] > 0
    region = json.loads((tmp_path / "ls" / "tasks_train.json").read_text())[0]["predictions"][0]["result"][0]
    assert (region["type"], region["from_name"]) == ("polygonlabels", "polygon")
    assert region["value"] == {"points": [[10.0, 10.0], [60.0, 10.0], [60.0, 90.0]], "closed": True,
                               "polygonlabels": ["object"]}  # fmt: skip
    config = ET.fromstring((tmp_path / "ls" / "label_config.xml").read_text())
    assert [c.tag for c in config] == ["Image", "RectangleLabels", "PolygonLabels"]
    with pytest.raises(ExportError, match="labelstudio export needs image files"):
        export_records(records, tmp_path / "none", "labelstudio", images="none")


# --- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["coco", "yolo", "jsonl", "captions", "labelstudio"])
def test_an_id_naming_a_path_writes_nothing_outside_the_export(tmp_path, fmt):
    image = write_png(tmp_path / "a.png", (10, 10), (1, 2, 3))
    results = {OD: boxes_result([[1.0, 1.0, 5.0, 5.0]], ["x"]), "<CAPTION>": "A thing."}
    ids = ["../../evil", "/abs/evil", "..", "a\\..\\b", "C:evil", "ok-id_1.v2"]
    records = [{"id": i, "source": {"path": str(image)}, "width": 10, "height": 10, "results": results} for i in ids]
    summary = export_records(records, tmp_path / "out" / "x", fmt, images="copy")
    assert summary["image_files"] == len(ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x"]
    written = [p for p in (tmp_path / "out" / "x").rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to((tmp_path / "out" / "x").resolve()) for p in written)
    names = {p.name for p in written}
    assert "ok-id_1.v2.png" in names and not any("evil" in name for name in names)


def test_errors_name_what_is_wrong(records, tmp_path):
    assert set(EXPORT_FORMATS) >= {"coco", "yolo", "jsonl", "captions", "parquet"}
    with pytest.raises(ExportError, match="unknown export format 'voc'"):
        export_records(records, tmp_path / "x", "voc")
    with pytest.raises(ExportError, match="yolo export needs image files"):
        export_records(records, tmp_path / "x", "yolo", images="none")
    with pytest.raises(ExportError, match="captions export needs image files"):
        export_records(records, tmp_path / "x", "captions", images="none")
    with pytest.raises(ExportError, match="images must be one of"):
        export_records(records, tmp_path / "x", "coco", images="hardlink")
    with pytest.raises(ExportError, match="val_fraction"):
        export_records(records, tmp_path / "x", "coco", val_fraction=1.0)
    with pytest.raises(ExportError, match="gives no regions"):
        export_records(records, tmp_path / "x", "coco", task="<CAPTION>")
    with pytest.raises(ExportError, match="captions export takes one of"):
        export_records(records, tmp_path / "x", "captions", task="<OD>")
    captions_only = [{**r, "results": {"<CAPTION>": "A car."}} for r in records]
    for fmt in ("coco", "yolo"):
        with pytest.raises(ExportError, match="no record holds a box task"):
            export_records(captions_only, tmp_path / "x", fmt)
    with pytest.raises(ExportError, match="no record holds a <DENSE_REGION_CAPTION> result"):
        export_records(captions_only, tmp_path / "x", "coco", task="DENSE_REGION_CAPTION")
    with pytest.raises(ExportError, match="width: expected a positive integer"):
        export_records([{**records[0], "width": None}], tmp_path / "x", "jsonl")
    assert not (tmp_path / "x").exists()
    export_records(records, tmp_path / "used", "jsonl")
    with pytest.raises(ExportError, match="not an empty folder"):
        export_records(records, tmp_path / "used", "jsonl")


def test_the_export_module_imports_no_pyarrow_or_pycocotools():
    code = "import florence2.label.export, sys; print([m for m in ('pyarrow', 'pycocotools') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- captions beside the images ----------------------------------------------------------------------------


def captioned_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """A dataset of photos/a.png (also found as photos/copy-of-a.png), photos/b.png (its caption
    spread over lines), a tar member, a deleted file and an image without a caption."""
    from collections import Counter

    from florence2.label import DatasetStore
    from florence2.label.store import Outcome

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "copy-of-a.png", "b.png", "gone.png", "quiet.png"):
        write_png(photos / name, (8, 8), (len(name), 0, 0))

    def outcome(name: str, image_id: str, results: dict, aliases=(), source=None) -> Outcome:
        source = source or {"path": str(photos / name)}
        names = [(str(photos / n), {"path": str(photos / n)}, "s") for n in aliases]
        return Outcome(source.get("path", name), source, "s", image_id, 8, 8, results, aliases=names)

    both = {"<CAPTION>": "A red square.", "<DETAILED_CAPTION>": "A red square\n on a   white field."}
    with DatasetStore(tmp_path / "ds", create=True) as store:
        run, _ = store.run_for({"model": "test"})
        store.commit(run, [
            outcome("a.png", "ida", both, aliases=["copy-of-a.png"]),
            outcome("b.png", "idb", {"<CAPTION>": "B.", "<DETAILED_CAPTION>": "Line one.\nLine two."}),
            outcome("m", "idm", both, source={"archive": str(tmp_path / "s.tar"), "member": "m.png"}),
            outcome("gone.png", "idg", both),
            outcome("quiet.png", "idq", {"<CAPTION>": "Q.", "<DETAILED_CAPTION>": "  "}),
        ], Counter())  # fmt: skip
    (photos / "gone.png").unlink()
    return tmp_path / "ds", photos


def test_captions_are_written_beside_every_file_name_and_existing_ones_are_kept(tmp_path):
    from florence2.label.export import write_sidecar_captions

    dataset, photos = captioned_dataset(tmp_path)
    (photos / "b.txt").write_text("my own words\n")
    summary = write_sidecar_captions(dataset, prefix="ohwx, ")
    assert summary["task"] == "<DETAILED_CAPTION>"  # the most detailed the records hold
    assert (summary["written"], summary["kept"], summary["skipped_count"]) == (2, 1, 3)
    assert (photos / "a.txt").read_text() == "ohwx, A red square on a white field.\n"
    assert (photos / "copy-of-a.txt").read_text() == (photos / "a.txt").read_text()
    assert (photos / "b.txt").read_text() == "my own words\n"  # kept
    reasons = sorted(s["reason"] for s in summary["skipped"])
    assert reasons == ["image file not found", "no <DETAILED_CAPTION> caption",
                       "no image file of its own (a tar member or a video frame)"]  # fmt: skip
    assert sorted(p.name for p in photos.iterdir() if p.suffix == ".txt") == ["a.txt", "b.txt", "copy-of-a.txt"]
    assert not list(photos.glob(".*"))  # no temporary file left behind
    again = write_sidecar_captions(dataset, task="CAPTION", overwrite=True, extension=".caption")
    assert (again["written"], again["kept"]) == (4, 0)  # quiet.png has a brief caption
    assert (photos / "b.caption").read_text() == "B.\n" and (photos / "quiet.caption").read_text() == "Q.\n"


@pytest.mark.parametrize(("options", "match"), [
    ({"task": "OD"}, "dataset captions takes one of"), ({"task": "MORE_DETAILED_CAPTION"}, "no record holds"),
    ({"task": "NOPE"}, "unknown task"), ({"extension": ".png"}, "extension"), ({"extension": "txt"}, "extension"),
    ({"extension": "./../x"}, "extension"), ({"extension": ".t/x"}, "extension"),
])  # fmt: skip
def test_bad_caption_options_are_refused_before_anything_is_written(tmp_path, options, match):
    from florence2.label.export import write_sidecar_captions

    dataset, photos = captioned_dataset(tmp_path)
    with pytest.raises(ExportError, match=match):
        write_sidecar_captions(dataset, **options)
    assert not [p for p in photos.iterdir() if p.suffix != ".png"]


def test_the_captions_command(tmp_path, capsys):
    from florence2.cli import main

    dataset, photos = captioned_dataset(tmp_path)
    assert main(["dataset", "captions", str(dataset), "--prefix", "sks ", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 3 and (photos / "b.txt").read_text() == "sks Line one. Line two.\n"
    assert main(["dataset", "captions", str(dataset), "--task", "OD"]) == 2
    assert "dataset captions takes one of" in capsys.readouterr().err
