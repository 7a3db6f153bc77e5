"""Dataset adapters on small hand-made files: targets in Florence-2's formats, and errors naming the
file, the line (or JSON element) and the field."""

import csv
import json
import pickle
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from florence2.coords import loc_tokens, quantize_flat
from florence2.data.formats import (
    FORMATS,
    Example,
    Mixture,
    detect_format,
    image_size,
    load_data,
    parse_data_spec,
    read_captions,
    read_coco,
    read_jsonl,
    read_ocr,
    read_refcoco,
    read_refexp,
    read_refs,
    read_synthetic,
    read_yolo,
    split_held_out,
)
from florence2.data.samples import OCR_LINE_SEPARATOR
from florence2.data.synthetic import WorldConfig, write_split
from florence2.errors import AnnotationError, TaskError, require_field
from florence2.parsing import post_process_generation
from florence2.tasks import build_prompt


def make_image(path: Path, size=(64, 48), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def locs(values, size) -> str:
    return loc_tokens(quantize_flat(values, size))


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_lines(path: Path, items) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in items))
    return path


def by_task(examples):
    out = {}
    for e in examples:
        out.setdefault(e.task, []).append(e)
    return out


# --- COCO --------------------------------------------------------------------------------------------


def coco_data():
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
            {"id": 3, "file_name": "empty.png", "width": 64, "height": 48},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "traffic light"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [4, 6, 20, 10], "iscrowd": 0},
            {
                "id": 11,
                "image_id": 1,
                "category_id": 9,
                "bbox": [30, 20, 10, 20],
                "segmentation": [[30, 20, 40, 20, 40, 40], [31, 21, 32, 21, 32, 22]],
            },
            {"id": 12, "image_id": 1, "category_id": 7, "bbox": [40, 2, 8, 8]},
            {"id": 13, "image_id": 2, "category_id": 9, "bbox": [0, 0, 64, 48.3]},  # a hair outside: clipped
            {"id": 14, "image_id": 2, "category_id": 7, "bbox": [0, 0, 64, 48], "iscrowd": 1},
        ],
    }


@pytest.fixture
def coco_dir(tmp_path):
    for name in ("a.png", "b.png", "empty.png"):
        make_image(tmp_path / "images" / name)
    write_json(tmp_path / "instances.json", coco_data())
    return tmp_path


def test_coco_detection_targets(coco_dir):
    notes = []
    tasks = ["<OD>", "OPEN_VOCABULARY_DETECTION", "<REGION_TO_SEGMENTATION>"]
    examples = read_coco(coco_dir / "instances.json", coco_dir / "images", tasks=tasks, notes=notes)
    groups = by_task(examples)
    size = (64, 48)
    od = {Path(e.image).name: e for e in groups["<OD>"]}
    assert set(od) == {"a.png", "b.png"}
    assert od["a.png"].prompt == build_prompt("<OD>")
    # reading order: top edges 2 (cat), 6 (cat), 20 (light); one label, then its boxes
    cat1, cat2, light = locs([40, 2, 48, 10], size), locs([4, 6, 24, 16], size), locs([30, 20, 40, 40], size)
    assert od["a.png"].target == f"cat{cat1}{cat2}traffic light{light}"
    assert od["b.png"].target == f"traffic light{locs([0, 0, 64, 48], size)}"  # the crowd box is left out
    ovd = {(Path(e.image).name, e.prompt): e.target for e in groups["<OPEN_VOCABULARY_DETECTION>"]}
    assert ovd[("a.png", "Locate cat in the image.")] == f"cat{cat1}cat{cat2}"
    assert ovd[("a.png", "Locate traffic light in the image.")] == f"traffic light{light}"
    [seg] = groups["<REGION_TO_SEGMENTATION>"]  # only annotation 11 has a polygon: its largest part
    assert seg.target == locs([30, 20, 40, 20, 40, 40], size)
    assert any("1 crowd" in n for n in notes) and any("1 images without annotations" in n for n in notes)
    parsed = post_process_generation(od["a.png"].target, "<OD>", size)["<OD>"]
    assert parsed["labels"] == ["cat", "cat", "traffic light"]
    assert np.allclose(parsed["bboxes"][2], [30, 20, 40, 40], atol=0.05)


def test_coco_defaults_and_image_folder(coco_dir):
    (coco_dir / "images" / "a.png").rename(coco_dir / "a.png")
    with pytest.raises(AnnotationError, match=r"image id 1.*a\.png not found"):
        read_coco(coco_dir / "instances.json", coco_dir / "images")
    for name in ("b.png", "empty.png"):
        (coco_dir / "images" / name).rename(coco_dir / name)
    examples = read_coco(coco_dir / "instances.json")  # images beside the JSON file
    assert {e.task for e in examples} == {"<OD>"} and len(examples) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["annotations"][1].update(bbox=[1, 2, 3]),
            r"instances\.json: annotations\[1\]\.bbox: expected 4",
        ),
        (lambda d: d["annotations"][0].update(category_id=8), r"annotations\[0\]\.category_id: no category"),
        (lambda d: d["annotations"][2].update(image_id=99), r"annotations\[2\]\.image_id: no image"),
        (
            lambda d: d["annotations"][0].update(bbox=[4, 6, 90, 10]),
            r"annotations\[0\]\.bbox: .* outside the 64x48",
        ),
        (
            lambda d: d["annotations"][0].update(bbox=[4, 6, -2, 10]),
            r"annotations\[0\]\.bbox: negative width or height",
        ),
        (lambda d: d["annotations"][1].update(segmentation=[[1, 2, 3]]), r"annotations\[1\]\.segmentation"),
        (lambda d: d["categories"][0].update(name="a<b"), r"categories\[0\]\.name: .* holds '<'"),
        (lambda d: d["images"][0].update(width=65), r"image id 1: width/height: the file says 65x48 but .* is 64x48"),
        (lambda d: d["images"][1].pop("file_name"), r"images\[1\]: missing field 'file_name'"),
        (lambda d: d.pop("categories"), r"instances\.json: missing top-level field 'categories'"),
    ],
)
def test_coco_errors_name_file_element_and_field(coco_dir, change, message):
    data = coco_data()
    change(data)
    write_json(coco_dir / "instances.json", data)
    with pytest.raises(AnnotationError, match=message):
        read_coco(coco_dir / "instances.json", coco_dir / "images")


def test_coco_malformed_json_names_the_line(coco_dir):
    (coco_dir / "instances.json").write_text('{\n  "images": [],\n  "annotations": [,]\n}')
    with pytest.raises(AnnotationError, match=r"instances\.json:3: malformed JSON"):
        read_coco(coco_dir / "instances.json")
    with pytest.raises(TaskError, match="gives no <CAPTION> samples"):
        read_coco(coco_dir / "instances.json", tasks=["CAPTION"])


def test_exif_rotated_images_have_their_displayed_size(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    Image.new("RGB", (64, 48)).save(path, exif=exif)
    assert image_size(path) == (48, 64)
    data = coco_data()
    data["images"] = [{"id": 1, "file_name": "rotated.jpg", "width": 64, "height": 48}]
    data["annotations"] = data["annotations"][:1]
    write_json(tmp_path / "c.json", data)
    with pytest.raises(AnnotationError, match="after EXIF rotation"):
        read_coco(tmp_path / "c.json")


# --- YOLO ----------------------------------------------------------------------------------------------


@pytest.fixture
def yolo_dir(tmp_path):
    root = tmp_path / "yolo"
    make_image(root / "images" / "train" / "a.png", (100, 50))
    make_image(root / "images" / "train" / "b.png", (100, 50))
    make_image(root / "images" / "train" / "nolabel.png", (100, 50))
    make_image(root / "images" / "val" / "c.png", (100, 50))
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n\n1 0.1 0.1 0.3 0.1 0.3 0.3\n")
    (root / "labels" / "train" / "b.txt").write_text("")
    (root / "labels" / "val" / "c.txt").write_text("1 0.25 0.5 0.5 1.0\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: dog\n  1: cat\n")
    return root


def test_yolo_boxes_polygons_and_classes(yolo_dir):
    notes = []
    examples = read_yolo(yolo_dir, split="train", tasks=["OD", "REGION_TO_CATEGORY"], notes=notes)
    groups = by_task(examples)
    size = (100, 50)
    [od] = groups["<OD>"]
    assert Path(od.image).name == "a.png"
    dog, cat = locs([40, 15, 60, 35], size), locs([10, 5, 30, 15], size)
    assert od.target == f"cat{cat}dog{dog}"
    assert sorted(e.target for e in groups["<REGION_TO_CATEGORY>"]) == ["cat", "dog"]
    assert any("1 images without a label file" in n for n in notes)
    assert any("1 images with an empty label file" in n for n in notes)
    [val] = read_yolo(yolo_dir, split="val")
    assert val.target == f"cat{locs([0, 0, 50, 50], size)}"


def test_yolo_class_names_from_classes_txt_and_simple_yaml(yolo_dir, monkeypatch):
    (yolo_dir / "data.yaml").unlink()
    with pytest.raises(AnnotationError, match="no class names"):
        read_yolo(yolo_dir, split="val")
    (yolo_dir / "classes.txt").write_text("dog\ncat\n")
    assert read_yolo(yolo_dir, split="val")[0].target.startswith("cat")
    (yolo_dir / "classes.txt").unlink()
    (yolo_dir / "data.yaml").write_text("names: ['wolf', 'lynx']  # two\n")
    import builtins

    real_import = builtins.__import__

    def no_yaml(name, *args, **kwargs):
        if name == "yaml":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_yaml)  # the fallback parser, without PyYAML
    assert read_yolo(yolo_dir, split="val")[0].target.startswith("lynx")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("2 0.5 0.5 0.1 0.1", r"c\.txt:2: class: id 2 is not in 0\.\.1"),
        ("x 0.5 0.5 0.1 0.1", r"c\.txt:2: class: expected an integer"),
        ("0 1.5 0.5 0.1 0.1", r"c\.txt:2: cx: 1\.5 is not a coordinate"),
        ("0 0.5 0.5 0.1", r"c\.txt:2: expected 'class cx cy w h'"),
        ("0 0.5 0.5 0.1 abc", r"c\.txt:2: coordinates: expected numbers"),
    ],
)
def test_yolo_errors_name_file_line_and_field(yolo_dir, line, message):
    (yolo_dir / "labels" / "val" / "c.txt").write_text("1 0.25 0.5 0.5 1.0\n" + line + "\n")
    with pytest.raises(AnnotationError, match=message):
        read_yolo(yolo_dir, split="val")


# --- JSON lines: prefix / suffix ------------------------------------------------------------------------


def test_jsonl_prefix_suffix(tmp_path):
    make_image(tmp_path / "imgs" / "a.png")
    path = write_lines(
        tmp_path / "train.jsonl",
        [
            {"image": "imgs/a.png", "prefix": "<OD>", "suffix": "car<loc_1><loc_2><loc_300><loc_400>"},
            "",
            {"image": "imgs/a.png", "prefix": "<CAPTION_TO_PHRASE_GROUNDING>a red car", "suffix": "a red car<loc_1>"},
            {"image": "imgs/a.png", "prefix": "What colour is the car?", "suffix": "red"},
            {"image": "imgs/a.png", "prefix": "<REGION_TO_CATEGORY><loc_1><loc_2><loc_3><loc_4>", "suffix": "car"},
        ],
    )
    examples = read_jsonl(path)
    assert [e.task for e in examples] == ["<OD>", "<CAPTION_TO_PHRASE_GROUNDING>", None, "<REGION_TO_CATEGORY>"]
    assert examples[0].prompt == "Locate the objects with category name in the image."
    assert examples[1].prompt == "Locate the phrases in the caption: a red car"
    assert examples[2].prompt == "What colour is the car?" and examples[2].target == "red"
    assert examples[3].prompt == "What is the region <loc_1><loc_2><loc_3><loc_4>?"
    assert [e.source for e in examples] == [f"{path}:1", f"{path}:3", f"{path}:4", f"{path}:5"]
    assert all(Path(e.image) == tmp_path / "imgs" / "a.png" for e in examples)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"image": "a.png", "prefix": "<OD>"}, r"train\.jsonl:2: missing field 'suffix'"),
        ({"image": "a.png", "prefix": 3, "suffix": "x"}, r"train\.jsonl:2: prefix: expected str"),
        ({"image": "nope.png", "prefix": "<OD>", "suffix": "x"}, r"train\.jsonl:2: image: file .*nope\.png not found"),
        ({"image": "a.png", "prefix": "<OD>", "suffix": "a<loc_1000>"}, r"train\.jsonl:2: suffix: location tokens"),
        ({"image": "a.png", "prefix": "<OCR> extra", "suffix": "x"}, r"train\.jsonl:2: prefix: task token <OCR>"),
        ('{"image": "a.png", "prefix": ', r"train\.jsonl:2: malformed JSON"),
    ],
)
def test_jsonl_errors_name_file_line_and_field(tmp_path, line, message):
    make_image(tmp_path / "a.png")
    good = {"image": "a.png", "prefix": "<CAPTION>", "suffix": "a cat"}
    path = write_lines(tmp_path / "train.jsonl", [good, line])
    with pytest.raises(AnnotationError, match=message):
        read_jsonl(path)


# --- captions -------------------------------------------------------------------------------------------


def test_captions_from_a_folder_of_txt_files(tmp_path):
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "sub" / "b.jpg")
    make_image(tmp_path / "c.png")  # no caption: skipped, reported
    (tmp_path / "a.png").with_suffix(".txt").write_text("  A red\nsquare.  \n")
    (tmp_path / "sub" / "b.txt").write_text("A blue circle.")
    notes = []
    examples = read_captions(tmp_path, tasks=["DETAILED_CAPTION"], notes=notes)
    assert sorted((Path(e.image).name, e.target) for e in examples) == [
        ("a.png", "A red square."),
        ("b.jpg", "A blue circle."),
    ]
    assert {e.prompt for e in examples} == {build_prompt("<DETAILED_CAPTION>")}
    assert any("1 images without a .txt caption" in n and "c.png" in n for n in notes)
    (tmp_path / "sub" / "b.txt").write_text("  \n")
    with pytest.raises(AnnotationError, match=r"b\.txt:1: caption: empty caption"):
        read_captions(tmp_path)


def test_captions_from_csv_and_jsonl(tmp_path):
    make_image(tmp_path / "images" / "a.png")
    make_image(tmp_path / "images" / "b.png")
    with open(tmp_path / "captions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerows([["file_name", "caption"], ["a.png", "A red square."], ["b.png", 'A "quoted", comma.']])
    examples = read_captions(tmp_path / "captions.csv", tmp_path / "images", tasks=["CAPTION", "MORE_DETAILED_CAPTION"])
    assert Counter(e.task for e in examples) == {"<CAPTION>": 2, "<MORE_DETAILED_CAPTION>": 2}
    assert {e.target for e in examples} == {"A red square.", 'A "quoted", comma.'}
    path = write_lines(tmp_path / "images" / "c.jsonl", [{"image": "a.png", "text": "Red."}])
    [example] = read_captions(path)
    assert example.target == "Red." and example.source == f"{path}:1"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["image", "words"], ["a.png", "x"]], r"captions\.csv:1: no caption column"),
        ([["image", "caption"], ["a.png", "ok"], ["a.png", " "]], r"captions\.csv:3: caption: expected a non-empty"),
        ([["image", "caption"], ["zz.png", "ok"]], r"captions\.csv:2: image file .*zz\.png not found"),
    ],
)
def test_caption_csv_errors_name_file_line_and_column(tmp_path, rows, message):
    make_image(tmp_path / "a.png")
    with open(tmp_path / "captions.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(AnnotationError, match=message):
        read_captions(tmp_path / "captions.csv")


# --- referring expressions ------------------------------------------------------------------------------


def refcoco_files(tmp_path, refs_format="json"):
    make_image(tmp_path / "images" / "a.png", (80, 60))
    instances = {
        "images": [{"id": 1, "file_name": "a.png", "width": 80, "height": 60}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {
                "id": 5,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 10, 20, 30],
                "segmentation": [[10, 10, 30, 10, 20, 40]],
            },
            {
                "id": 6,
                "image_id": 1,
                "category_id": 1,
                "bbox": [50, 5, 10, 10],
                "segmentation": {"counts": "x", "size": [60, 80]},
            },
        ],
    }
    write_json(tmp_path / "instances.json", instances)
    refs = [
        {
            "ref_id": 0,
            "ann_id": 5,
            "image_id": 1,
            "split": "train",
            "sentences": [{"sent": "the  left cat"}, {"sent": "it"}],
        },
        {
            "ref_id": 1,
            "ann_id": 6,
            "image_id": 1,
            "split": "val",
            "sentences": [{"raw": "small cat", "sent": "small cat"}],
        },
    ]
    if refs_format == "json":
        return write_json(tmp_path / "refs.json", refs), tmp_path / "instances.json"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    return path, tmp_path / "instances.json"


@pytest.mark.parametrize("refs_format", ["json", "pickle"])
def test_refcoco_grounding_segmentation_and_splits(tmp_path, refs_format):
    refs, instances = refcoco_files(tmp_path, refs_format)
    notes = []
    examples = read_refcoco(refs, instances, tmp_path / "images", split="train", notes=notes)
    size = (80, 60)
    box = locs([10, 10, 30, 40], size)
    groups = by_task(examples)
    [grounding] = groups["<CAPTION_TO_PHRASE_GROUNDING>"]  # "it" is a phrase the parser drops
    assert grounding.prompt == "Locate the phrases in the caption: the left cat"
    assert grounding.target == f"the left cat{box}"
    assert [e.target for e in groups["<REFERRING_EXPRESSION_SEGMENTATION>"]] == [
        locs([10, 10, 30, 10, 20, 40], size)
    ] * 2
    assert any("ignores" in n for n in notes)
    val = read_refcoco(refs, instances, tmp_path / "images", split="val", tasks=["OPEN_VOCABULARY_DETECTION"])
    assert [(e.prompt, e.target) for e in val] == [
        ("Locate small cat in the image.", f"small cat{locs([50, 5, 60, 15], size)}")
    ]
    notes = []
    read_refcoco(refs, instances, tmp_path / "images", split="val", notes=notes)  # an RLE mask: no polygon
    assert any("without a polygon" in n for n in notes)
    with pytest.raises(AnnotationError, match="no ref of split 'testA'"):
        read_refcoco(refs, instances, tmp_path / "images", split="testA")


def test_refcoco_errors(tmp_path):
    refs, instances = refcoco_files(tmp_path)
    data = json.loads(refs.read_text())
    data[1]["ann_id"] = 77
    write_json(refs, data)
    with pytest.raises(AnnotationError, match=r"refs\.json: refs\[1\]\.ann_id: no annotation 77 in .*instances\.json"):
        read_refcoco(refs, instances, tmp_path / "images")
    data[1] = {"ann_id": 6, "sentences": [{"sent": ""}]}
    write_json(refs, data)
    with pytest.raises(AnnotationError, match=r"refs\[1\]\.sentences\[0\]\.sent: empty text"):
        read_refcoco(refs, instances, tmp_path / "images")
    # a pickle that asks for any class is refused: refs are plain data
    evil = tmp_path / "evil.p"
    evil.write_bytes(pickle.dumps([OrderedDict(ann_id=5)]))
    with pytest.raises(AnnotationError, match="only plain data"):
        read_refcoco(evil, instances, tmp_path / "images")


def test_refs_pickles_of_python2_decode_utf8_text(tmp_path):
    # refs(unc).p as Python 2 writes it (protocol 2): its strs are byte strings (SHORT_BINSTRING)
    def short_binstring(data: bytes) -> bytes:
        return b"U" + bytes([len(data)]) + data

    fields = [b"sent", "caf\u00e9".encode(), b"raw", "\u00e9t\u00e9".encode("latin1")]
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"\x80\x02]q\x00}q\x01(" + b"".join(map(short_binstring, fields)) + b"ua.")
    [(where, ref)] = read_refs(path)
    assert where.endswith("refs(unc).p: refs[0]")
    assert ref == {"sent": "caf\u00e9", "raw": "\u00e9t\u00e9"}  # UTF-8 where valid, else Latin-1


def test_refexp_simple_form(tmp_path):
    make_image(tmp_path / "a.png", (80, 60))
    path = write_lines(
        tmp_path / "refs.jsonl",
        [
            {
                "image": "a.png",
                "expression": "the red car",
                "bbox": [10, 10, 30, 40],
                "polygon": [10, 10, 30, 10, 20, 40],
            },
            {"image": "a.png", "expressions": ["blue sky", "the sky"], "polygon": [[0, 0, 80, 0, 80, 20, 0, 20]]},
        ],
    )
    examples = read_refexp(path, tasks=["CAPTION_TO_PHRASE_GROUNDING", "REFERRING_EXPRESSION_SEGMENTATION"])
    size = (80, 60)
    assert [e.target for e in examples if e.task == "<CAPTION_TO_PHRASE_GROUNDING>"] == [
        f"the red car{locs([10, 10, 30, 40], size)}",
        f"blue sky{locs([0, 0, 80, 20], size)}",
        f"the sky{locs([0, 0, 80, 20], size)}",
    ]
    sky = [e for e in examples if e.task == "<REFERRING_EXPRESSION_SEGMENTATION>" and "sky" in e.prompt]
    assert [e.prompt for e in sky] == [
        "Locate blue sky in the image with mask",
        "Locate the sky in the image with mask",
    ]
    assert sky[0].target == locs([0, 0, 80, 0, 80, 20, 0, 20], size)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"image": "a.png", "expression": "x", "bbox": [30, 10, 10, 40]}, r"refs\.jsonl:1: bbox: expected XYXY"),
        ({"image": "a.png", "expression": "x"}, r"refs\.jsonl:1: missing field 'bbox' \(or 'polygon'\)"),
        ({"image": "a.png", "bbox": [1, 1, 2, 2]}, r"refs\.jsonl:1: missing field 'expression'"),
        ({"image": "a.png", "expression": "x", "polygon": [1, 2, 3, 4]}, r"refs\.jsonl:1: polygon: expected an even"),
    ],
)
def test_refexp_errors(tmp_path, line, message):
    make_image(tmp_path / "a.png", (80, 60))
    with pytest.raises(AnnotationError, match=message):
        read_refexp(write_lines(tmp_path / "refs.jsonl", [line]))


# --- OCR ------------------------------------------------------------------------------------------------


def test_ocr_quads_and_reading_order(tmp_path):
    make_image(tmp_path / "a.png", (100, 80))
    stop = [10, 50, 40, 50, 40, 60, 10, 60]
    exit_quad = [60, 5, 90, 8, 89, 20, 59, 17]
    path = write_lines(
        tmp_path / "ocr.jsonl",
        [
            {"image": "a.png", "texts": [{"text": "STOP", "quad": stop}, {"text": "EXIT", "quad": exit_quad}]},
            {"image": "a.png", "texts": [{"text": "OPEN  now", "bbox": [5, 5, 25, 15]}]},
            {"image": "a.png", "texts": []},
        ],
    )
    notes = []
    examples = read_ocr(path, tasks=["OCR_WITH_REGION", "OCR", "REGION_TO_OCR"], notes=notes)
    size = (100, 80)
    first = [e for e in examples if e.source == f"{path}:1"]
    targets = {e.task: e.target for e in first if e.task != "<REGION_TO_OCR>"}
    assert targets["<OCR_WITH_REGION>"] == f"EXIT{locs(exit_quad, size)}STOP{locs(stop, size)}"
    assert targets["<OCR>"] == f"EXIT{OCR_LINE_SEPARATOR}STOP"
    region = [e for e in first if e.task == "<REGION_TO_OCR>"]
    assert sorted(e.target for e in region) == ["EXIT", "STOP"]
    second = [e for e in examples if e.source == f"{path}:2" and e.task == "<OCR_WITH_REGION>"]
    assert second[0].target == f"OPEN now{locs([5, 5, 25, 5, 25, 15, 5, 15], size)}"
    assert any("1 images without text" in n for n in notes)
    parsed = post_process_generation(targets["<OCR_WITH_REGION>"], "<OCR_WITH_REGION>", size)["<OCR_WITH_REGION>"]
    assert parsed["labels"] == ["EXIT", "STOP"]


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([{"text": "A", "quad": [1, 2, 3, 4, 5, 6, 7]}], r"ocr\.jsonl:1: texts\[0\]: quad: expected 8 numbers"),
        ([{"text": "A", "quad": [1, 2, 3, 4, 5, 6, 7, 900]}], r"texts\[0\]: quad: .* outside the 100x80 image"),
        ([{"text": "A"}], r"texts\[0\]: missing field 'quad' \(or 'bbox'\)"),
        ([{"text": " ", "bbox": [1, 1, 2, 2]}], r"texts\[0\]: text: empty text"),
        ([{"text": "a<b", "bbox": [1, 1, 2, 2]}], r"texts\[0\]: text: .* holds '<'"),
    ],
)
def test_ocr_errors(tmp_path, texts, message):
    make_image(tmp_path / "a.png", (100, 80))
    with pytest.raises(AnnotationError, match=message):
        read_ocr(write_lines(tmp_path / "ocr.jsonl", [{"image": "a.png", "texts": texts}]))


# --- synthetic splits -------------------------------------------------------------------------------------


def test_synthetic_split(tmp_path):
    write_split(tmp_path / "split", 3, seed=4, config=WorldConfig(image_size=64))
    examples = read_synthetic(tmp_path / "split", tasks=["OD", "CAPTION"])
    assert Counter(e.task for e in examples) == {"<OD>": 3, "<CAPTION>": 3}
    assert all(Path(e.image).is_file() for e in examples)


# --- specs, detection, mixing -----------------------------------------------------------------------------


def test_parse_data_spec():
    spec = parse_data_spec("coco:ann.json:imgs@tasks=OD+OPEN_VOCABULARY_DETECTION,weight=2")
    assert (spec.format, spec.paths, spec.tasks, spec.weight) == (
        "coco",
        ("ann.json", "imgs"),
        ("<OD>", "<OPEN_VOCABULARY_DETECTION>"),
        2.0,
    )
    spec = parse_data_spec("refcoco:refs(unc).p:instances.json:train2014/@split=train")
    assert spec.paths == ("refs(unc).p", "instances.json", "train2014/") and spec.options == {"split": "train"}
    assert parse_data_spec("x@y/data.jsonl", default_format="jsonl").paths == ("x@y/data.jsonl",)  # '@' in a path
    assert str(parse_data_spec("yolo:data")) == "yolo:data"
    for text, message in (
        ("coco:a.json@weight=0", "weight: expected a positive number"),
        ("coco:a.json@split=train", "unknown option 'split' for coco"),
        ("coco:a.json:b:c", "takes ANNOTATIONS.json"),
        ("coco:a.json@tasks=NOPE", "unknown task"),
        ("refcoco:refs.p", "takes REFS.p:INSTANCES.json"),
    ):
        with pytest.raises(AnnotationError, match=message):
            parse_data_spec(text)


def test_detect_format(tmp_path, coco_dir, yolo_dir):
    assert detect_format([str(coco_dir / "instances.json")]) == "coco"
    assert detect_format([str(yolo_dir)]) == "yolo"
    assert parse_data_spec(str(coco_dir / "instances.json")).format == "coco"
    write_lines(tmp_path / "p.jsonl", [{"image": "a", "prefix": "<OD>", "suffix": ""}])
    write_lines(tmp_path / "o.jsonl", [{"image": "a", "texts": []}])
    write_lines(tmp_path / "r.jsonl", [{"image": "a", "expression": "x"}])
    write_lines(tmp_path / "c.jsonl", [{"image": "a", "caption": "x"}])
    (tmp_path / "c.csv").write_text("image,caption\n")
    (tmp_path / "refs.p").write_bytes(b"")
    write_split(tmp_path / "split", 1, seed=0, config=WorldConfig(image_size=64))
    caps = tmp_path / "caps"
    caps.mkdir()
    (caps / "a.txt").write_text("x")
    expected = {"p.jsonl": "jsonl", "o.jsonl": "ocr", "r.jsonl": "refexp", "c.jsonl": "captions", "c.csv": "captions"}
    for name, fmt in expected.items():
        assert detect_format([str(tmp_path / name)]) == fmt, name
    assert detect_format([str(tmp_path / "refs.p"), "instances.json"]) == "refcoco"
    assert detect_format([str(tmp_path / "split")]) == "synthetic"
    assert detect_format([str(caps)]) == "captions"
    (tmp_path / "what.txt").write_text("")
    with pytest.raises(AnnotationError, match="cannot tell the format.*FORMAT one of coco"):
        detect_format([str(tmp_path / "what.txt")])
    assert set(FORMATS) == {"coco", "yolo", "jsonl", "captions", "refcoco", "refexp", "ocr", "labels", "synthetic"}


def test_load_data_applies_tasks(coco_dir):
    spec = f"coco:{coco_dir / 'instances.json'}:{coco_dir / 'images'}"
    assert {e.task for e in load_data(spec)} == {"<OD>"}
    assert {e.task for e in load_data(spec, tasks=["<REGION_PROPOSAL>"])} == {"<REGION_PROPOSAL>"}
    assert {e.task for e in load_data(spec + "@tasks=OD", tasks=["<REGION_PROPOSAL>"])} == {"<OD>"}


def example(i: int, image: str | None = None) -> Example:
    return Example(image or f"img{i}.png", "p", f"t{i}", "<OD>", f"f:{i}")


def test_mixture_is_a_pure_weighted_shuffle():
    items = [example(i) for i in range(6)]
    mixture = Mixture(items, [1, 1, 1, 1, 2, 0.5], seed=3)
    again = Mixture(items, [1, 1, 1, 1, 2, 0.5], seed=3)
    drawn = [mixture[k] for k in range(6000)]
    assert [again[k] for k in reversed(range(6000))] == drawn[::-1]  # any order, same items
    counts = Counter(e.target for e in drawn)
    assert counts["t4"] / counts["t0"] == pytest.approx(2.0, rel=0.1)
    assert counts["t5"] / counts["t0"] == pytest.approx(0.5, rel=0.15)
    first_epoch = [mixture[k].target for k in range(len(mixture.epoch(0)))]
    assert Counter(first_epoch)["t0"] == 1 and Counter(first_epoch)["t4"] == 2  # whole weights are exact
    with pytest.raises(ValueError):
        Mixture(items, [0] * 6)


def test_held_out_split_is_by_image_and_stable():
    items = [example(i, image=f"img{i // 3}.png") for i in range(300)]  # 3 examples per image
    train, held = split_held_out(items, 0.2, seed=0)
    assert {e.image for e in train}.isdisjoint({e.image for e in held})
    assert 0.1 < len(held) / len(items) < 0.3
    assert split_held_out(items[:150], 0.2, seed=0)[1] == [
        e for e in held if e in items[:150]
    ]  # stable under additions
    assert split_held_out(items, 0.2, seed=1)[1] != held
    assert len({e.image for e in split_held_out(items, 1e-9)[1]}) == 1  # a positive fraction holds one out


def test_require_field_names_where_and_key():
    assert require_field("a.json:3", {"n": 2}, "n", int) == 2
    with pytest.raises(AnnotationError, match=r"^a\.json:3: missing field 'n'$"):
        require_field("a.json:3", {}, "n", int)
    with pytest.raises(AnnotationError, match=r"^objects\[0\]\.n: expected int, got True$"):
        require_field("objects[0]", {"n": True}, "n", int)  # a bool is no int
    with pytest.raises(AnnotationError, match=r"^a\.json:3: n: expected int or float, got 'x'$"):
        require_field("a.json:3", {"n": "x"}, "n", (int, float), sep=": ")
    with pytest.raises(AnnotationError, match=r"^expected a JSON object, got list$"):
        require_field("", [1], "n", int)
