"""The standard-benchmark runners: readers, scores against the reference scorers, hand-computed
cases, malformed files, and every runner end to end on a synthetic export with the embedded model."""

import contextlib
import copy
import io
import json
import pickle
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from florence2.data.formats import (
    BenchmarkSample,
    read_caption_references,
    read_coco_detection,
    read_flickr30k,
    read_ocr_references,
    read_refcoco_expressions,
)
from florence2.errors import AnnotationError
from florence2.eval import benchmarks
from florence2.eval import cli as eval_cli
from florence2.eval.benchmarks import (
    evaluate_captions,
    evaluate_coco_detection,
    evaluate_flickr30k,
    evaluate_ocr,
    evaluate_refcoco,
    predict_samples,
)
from florence2.eval.metrics import caption_scores, coco_evaluate, java_available, ptb_tokenize
from florence2.tasks import get_task

try:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
except ImportError:
    COCO = None
needs_coco = pytest.mark.skipif(COCO is None, reason="needs pycocotools (the eval extra)")
try:
    import pycocoevalcap  # noqa: F401

    HAVE_EVALCAP = True
except ImportError:
    HAVE_EVALCAP = False
needs_evalcap = pytest.mark.skipif(not HAVE_EVALCAP, reason="needs pycocoevalcap (the eval extra)")
needs_java = pytest.mark.skipif(not (HAVE_EVALCAP and java_available()), reason="needs Java and pycocoevalcap")


def square(x0, y0, side):
    return [x0, y0, x0 + side, y0, x0 + side, y0 + side, x0, y0 + side]


def write_images(folder: Path, names, size=(100, 80)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        Image.new("RGB", size, (k * 40 % 256, 120, 200)).save(folder / name)
    return folder


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


class TablePredictor:
    """Answers from a table ``(image file name, task token, text) -> inner result``; anything else
    gets the task's empty answer. Records every call."""

    EMPTY = {
        "<OD>": {"bboxes": [], "labels": []},
        "<CAPTION_TO_PHRASE_GROUNDING>": {"bboxes": [], "labels": []},
        "<OPEN_VOCABULARY_DETECTION>": {"bboxes": [], "bboxes_labels": [], "polygons": [], "polygons_labels": []},
        "<REFERRING_EXPRESSION_SEGMENTATION>": {"polygons": [], "labels": []},
    }

    def __init__(self, table):
        self.table = table
        self.calls = []

    def predict(self, images, task, text=None, *, batch_size=8, **decoding):
        tasks = [task] if isinstance(task, str) else list(task)
        self.calls.append({"images": len(images), "tasks": tasks, "text": text, "batch_size": batch_size, **decoding})
        texts = text if isinstance(text, list) else [text] * len(images)  # one text per image, or one for all
        results = []
        for image, image_text in zip(images, texts):
            result = {"sequence_scores": {}}
            for t in tasks:
                token = get_task(t).token
                result[token] = self.table.get((Path(image).name, token, image_text), self.EMPTY.get(token, ""))
                result["sequence_scores"][token] = 0.5
            results.append(result)
        return results


# --------------------------------------------------------------------------------------------------
# predict_samples
# --------------------------------------------------------------------------------------------------


def test_predict_samples_groups_calls_and_passes_options(tmp_path: Path):
    images = write_images(tmp_path, ["a.png", "b.png", "c.png"])
    table = {("b.png", "<OD>", None): {"bboxes": [[0, 0, 1, 1]], "labels": ["x"]}}
    predictor = TablePredictor(table)
    samples = [BenchmarkSample(n, images / n) for n in ("a.png", "b.png", "c.png")]
    answers, seconds = predict_samples(predictor, samples, "od", batch_size=2, decoding={"num_beams": 1})
    assert [a.result["labels"] for a in answers] == [[], ["x"], []]
    assert all(a.sequence_score == 0.5 for a in answers) and seconds >= 0
    assert predictor.calls == [{"images": 3, "tasks": ["<OD>"], "text": None, "batch_size": 2, "num_beams": 1}]
    # samples of one task run in one call, each image with its own text; an image asked twice the
    # same thing runs once
    texts = [
        BenchmarkSample("1", images / "a.png", "x"),
        BenchmarkSample("2", images / "b.png", "x"),
        BenchmarkSample("3", images / "a.png", "y"),
    ]
    predictor = TablePredictor({})
    predict_samples(predictor, texts + texts[:1], "<CAPTION_TO_PHRASE_GROUNDING>", decoding={"score_threshold": 0.3})
    assert [(c["images"], c["text"], c["score_threshold"]) for c in predictor.calls] == [(3, ["x", "x", "y"], 0.3)]


# --------------------------------------------------------------------------------------------------
# COCO detection
# --------------------------------------------------------------------------------------------------

CATEGORIES = [{"id": 3, "name": "car"}, {"id": 7, "name": "traffic light"}]


def coco_gt() -> dict:
    """3 images, 2 categories, a crowd region, objects of every COCO area range."""
    boxes = [  # image id, category id, XYWH, iscrowd
        (1, 3, [10, 10, 20, 20], 0),
        (1, 3, [40, 30, 50, 40], 0),
        (1, 7, [5, 60, 8, 12], 0),
        (2, 3, [0, 0, 99.5, 79.5], 0),
        (2, 7, [60, 10, 30, 30], 1),
        (3, 7, [20, 20, 40, 20], 0),
        (3, 7, [70, 50, 6, 6], 0),
    ]
    annotations = [
        {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd}
        for k, (i, c, b, crowd) in enumerate(boxes)
    ]
    images = [{"id": i, "file_name": f"{i:03d}.png", "width": 100, "height": 80} for i in (1, 2, 3)]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def od_result(detections):
    """An <OD> result from (label, XYWH, score) triples."""
    return {
        "bboxes": [[x, y, x + w, y + h] for _, (x, y, w, h), _ in detections],
        "labels": [label for label, _, _ in detections],
        "scores": [s for _, _, s in detections],
    }


PREDICTED = {  # image id -> (label, XYWH, score); values exact in binary so XYWH survives XYXY and back
    1: [("car", [11, 10, 20, 21], 0.9), ("Car", [42, 31, 47, 40], 0.6), ("traffic light", [5, 61, 8, 11], 0.3),
        ("car", [60, 5, 10, 10], 0.8)],
    2: [("car", [0.5, 0, 99, 79.5], 0.7), ("traffic light", [61, 11, 29, 29], 0.95)],
    3: [("traffic light", [22, 18, 40, 22], 0.4), ("traffic light", [69.5, 50, 6.5, 6.25], 0.2),
        ("zebra", [1, 1, 5, 5], 0.99)],
}  # fmt: skip


@pytest.fixture
def coco_files(tmp_path: Path):
    images = write_images(tmp_path / "val", [f"{i:03d}.png" for i in (1, 2, 3)])
    return write_json(tmp_path / "instances_val.json", coco_gt()), images


@needs_coco
def test_coco_map_equals_pycocotools_on_the_same_files(coco_files, tmp_path: Path):
    annotations, images = coco_files
    ids = {"car": 3, "traffic light": 7}
    results = [
        {"image_id": i, "category_id": ids[label.lower()], "bbox": box, "score": score}
        for i, detections in PREDICTED.items()
        for label, box, score in detections
        if label.lower() in ids
    ]
    results_file = write_json(tmp_path / "results.json", results)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotations))
        evaluator = COCOeval(coco, coco.loadRes(str(results_file)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    reference = [None if s < 0 else s for s in evaluator.stats]
    ours = coco_evaluate(json.loads(annotations.read_text()), results)
    assert list(ours.values()) == pytest.approx(reference)
    assert 0.3 < ours["AP"] < 0.9  # a case with something to rank

    table = {(f"{i:03d}.png", "<OD>", None): od_result(d) for i, d in PREDICTED.items()}
    summary = evaluate_coco_detection(TablePredictor(table), annotations, images, tmp_path / "out")
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
    expected = [None if reference[k] is None else 100 * reference[k] for k in (0, 1, 2, 3, 4, 5, 8)]
    assert [summary["figures"][n] for n in names] == pytest.approx(expected)
    assert summary["counts"] == {"images": 3, "objects": 6, "detections": 8, "unmatched_labels": 1}
    assert summary["settings"]["scores"] == "model"
    assert "'zebra' x1" in summary["notes"][0]
    lines = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ["1", "2", "3"] and lines[0]["detections"] == 4
    assert lines[0]["sequence_score"] == 0.5 and lines[2]["prediction"]["labels"][-1] == "zebra"
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["figures"] == summary["figures"]
    assert "| AP | " in (tmp_path / "out" / "summary.md").read_text()


@needs_coco
def test_coco_det_perfect_partial_and_unit_scores(coco_files, tmp_path: Path):
    annotations, images = coco_files
    gt = coco_gt()
    by_image = {}
    for a in gt["annotations"]:
        if not a["iscrowd"]:
            name = "car" if a["category_id"] == 3 else "traffic light"
            by_image.setdefault(a["image_id"], []).append((name, a["bbox"], 1.0))
    perfect = {(f"{i:03d}.png", "<OD>", None): od_result(d) for i, d in by_image.items()}
    summary = evaluate_coco_detection(TablePredictor(perfect), annotations, images)
    assert summary["figures"]["AP"] == pytest.approx(100.0)
    assert summary["figures"]["AP_unit_scores"] == pytest.approx(100.0)

    # image 1 only: one of its two cars found -> car AP = 51/101 (101-point interpolation); the
    # traffic light found exactly -> AP 100; mean over the two categories
    partial = {("001.png", "<OD>", None): od_result([by_image[1][0], by_image[1][2]])}
    summary = evaluate_coco_detection(TablePredictor(partial), annotations, images, max_images=1)
    assert summary["figures"]["AP50"] == pytest.approx(100 * (51 / 101 + 1) / 2)
    assert summary["counts"]["images"] == 1 and summary["counts"]["objects"] == 3

    # a wrong box first but scored low: real scores rank it last (car AP 100); constant scores keep
    # the output order: miss, hit, hit -> precision 1/2 at recall 1/2 and 2/3 at recall 1, and the
    # interpolated precision (the best at this recall or beyond) is 2/3 everywhere: car AP 2/3
    ranked = by_image[1][:2] + by_image[1][2:]
    ranked = [("car", [70, 0, 20, 20], 0.1), *[(n, b, 0.9) for n, b, _ in ranked]]
    table = {("001.png", "<OD>", None): od_result(ranked)}
    summary = evaluate_coco_detection(TablePredictor(table), annotations, images, max_images=1)
    car_ap_real, car_ap_unit = 1.0, 2 / 3
    assert summary["figures"]["AP50"] == pytest.approx(100 * (car_ap_real + 1) / 2)
    assert summary["figures"]["AP50_unit_scores"] == pytest.approx(100 * (car_ap_unit + 1) / 2)
    forced = evaluate_coco_detection(TablePredictor(table), annotations, images, max_images=1, unit_scores=True)
    assert forced["figures"]["AP50"] == pytest.approx(summary["figures"]["AP50_unit_scores"])
    assert "AP_unit_scores" not in forced["figures"] and forced["settings"]["scores"] == "1.0 (forced)"
    unscored = {key: {k: v for k, v in r.items() if k != "scores"} for key, r in table.items()}
    plain = evaluate_coco_detection(TablePredictor(unscored), annotations, images, max_images=1)
    assert plain["settings"]["scores"] == "1.0 (the results carry none)"
    assert plain["figures"]["AP50"] == pytest.approx(forced["figures"]["AP50"])


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------

REFERENCES = {
    "001.png": ["A red circle on the left.", "a red round shape"],
    "002.png": ["Two blue stars at the top."],
    "003.png": ["A big green square, near the bottom!"],
}


def caption_files(tmp_path: Path) -> dict[str, Path]:
    names = list(REFERENCES)
    images = write_images(tmp_path / "images", names)
    coco = {
        "images": [{"id": k + 1, "file_name": n, "width": 100, "height": 80} for k, n in enumerate(names)]
        + [{"id": 99, "file_name": "no-captions.png"}],  # skipped: no reference
        "annotations": [
            {"id": 10 * k + j, "image_id": k + 1, "caption": c}
            for k, n in enumerate(names)
            for j, c in enumerate(REFERENCES[n])
        ],
    }
    karpathy = {
        "images": [
            {"filepath": "", "filename": n, "cocoid": k + 1, "split": "test", "sentences": [{"raw": c} for c in refs]}
            for k, (n, refs) in enumerate(REFERENCES.items())
        ]
        + [{"filepath": "", "filename": "001.png", "cocoid": 50, "split": "train", "sentences": [{"raw": "x"}]}]
    }
    textcaps = {
        "data": [
            {"image_id": Path(n).stem, "image_path": f"train/{n}", "caption_str": c, "reference_strs": refs}
            for n, refs in REFERENCES.items()
            for c in refs
        ]
    }
    return {
        "images": images,
        "coco": write_json(tmp_path / "captions_val.json", coco),
        "karpathy": write_json(tmp_path / "dataset_coco.json", karpathy),
        "textcaps": write_json(tmp_path / "TextCaps_0.1_val.json", textcaps),
    }


def caption_table(captions: dict[str, str], task="<CAPTION>"):
    return TablePredictor({(n, task, None): c for n, c in captions.items()})


@needs_evalcap
def test_caption_formats_read_alike(tmp_path: Path):
    files = caption_files(tmp_path)
    read = {
        "coco": read_caption_references(files["coco"], files["images"]),
        "karpathy": read_caption_references(files["karpathy"], files["images"], split="test"),
        "textcaps": read_caption_references(files["textcaps"], files["images"]),
    }
    for kind, data in read.items():
        assert data.format == kind
        assert {s.image.name: s.truth for s in data.samples} == REFERENCES, kind
    with pytest.raises(AnnotationError, match="splits in the file: test, train"):
        read_caption_references(files["karpathy"], files["images"], split="val")
    predictor = caption_table({n: refs[0] for n, refs in REFERENCES.items()})
    figures = [
        evaluate_captions(predictor, files[k], files["images"], java=False)["figures"] for k in ("coco", "textcaps")
    ]
    assert figures[0] == figures[1]


@needs_evalcap
def test_captions_perfect_and_partial(tmp_path: Path):
    from pycocoevalcap.cider.cider import Cider

    files = caption_files(tmp_path)
    perfect = {n: refs[0] for n, refs in REFERENCES.items()}
    summary = evaluate_captions(caption_table(perfect), files["coco"], files["images"], tmp_path / "out", java=False)
    figures = summary["figures"]
    assert figures["BLEU-4"] == pytest.approx(100.0, abs=1e-6) and figures["ROUGE-L"] == pytest.approx(100.0)
    assert figures["METEOR"] is None and summary["settings"]["tokenizer"] == "simple" and summary["notes"]
    # CIDEr-D is pycocoevalcap's Cider on the same tokens (a perfect caption scores below 10: its
    # n-grams shared by every image's references carry no weight)
    from florence2.eval.metrics import tokenize_caption

    gts = {k: [tokenize_caption(r) for r in REFERENCES[n]] for k, n in enumerate(REFERENCES)}
    res = {k: [tokenize_caption(perfect[n])] for k, n in enumerate(REFERENCES)}
    assert figures["CIDEr"] == pytest.approx(100 * Cider().compute_score(gts, res)[0])
    assert summary["counts"] == {"images": 3, "references": 4}
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["references"] == REFERENCES["001.png"]

    # "a b c d" against "a b x d": 3 of 4 unigrams (BLEU-1 75) and an LCS of 3 of 4 (ROUGE-L 75)
    scores = caption_scores(["a b c d"], [["a b x d"]], java=False)
    assert 100 * scores["BLEU-1"] == pytest.approx(75.0) and 100 * scores["ROUGE-L"] == pytest.approx(75.0)
    assert scores["BLEU-2"] == pytest.approx(1 / 3**0.5 * 0.75**0.5, rel=1e-6)  # (3/4 * 1/3) ** (1/2)
    with pytest.raises(ValueError, match="at least one reference"):
        caption_scores(["a"], [[]])


@needs_java
def test_captions_with_java_match_coco_caption(tmp_path: Path):
    """With Java: pycocoevalcap's PTB tokenizer output, and BLEU/ROUGE-L/CIDEr-D on it as
    coco-caption computes them; METEOR from its jar."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    candidates = ["A red circle, left.", "two blue stars at the top", "A green square (big)!"]
    references = list(REFERENCES.values())
    gts = {k: [{"caption": r} for r in refs] for k, refs in enumerate(references)}
    res = {k: [{"caption": c}] for k, c in enumerate(candidates)}
    with contextlib.redirect_stdout(io.StringIO()):
        gts_tokens, res_tokens = PTBTokenizer().tokenize(gts), PTBTokenizer().tokenize(res)
        bleu = Bleu(4).compute_score(gts_tokens, res_tokens)[0]
    assert ptb_tokenize(candidates) == [res_tokens[k][0] for k in range(3)]
    scores = caption_scores(candidates, references, java=True)
    assert scores["tokenizer"] == "ptb"
    assert [scores[f"BLEU-{n}"] for n in (1, 2, 3, 4)] == pytest.approx(bleu)
    assert scores["ROUGE-L"] == pytest.approx(Rouge().compute_score(gts_tokens, res_tokens)[0])
    assert scores["CIDEr"] == pytest.approx(Cider().compute_score(gts_tokens, res_tokens)[0])
    assert 0.2 < scores["METEOR"] < 1.0


@needs_evalcap
def test_caption_scores_without_java_or_when_meteor_fails(monkeypatch):
    from florence2.eval import metrics

    monkeypatch.setattr(metrics, "java_available", lambda: False)
    assert caption_scores(["a b"], [["a b"]])["tokenizer"] == "simple"
    with pytest.raises(RuntimeError, match="java"):
        caption_scores(["a b"], [["a b"]], java=True)
    monkeypatch.setattr(metrics, "java_available", lambda: True)
    monkeypatch.setattr(metrics, "ptb_tokenize", lambda texts: [metrics.tokenize_caption(t) for t in texts])

    def no_jvm(*args):
        raise OSError("could not reserve 2 GB for the JVM")

    monkeypatch.setattr(metrics, "_meteor", no_jvm)
    scores = caption_scores(["a b c d"], [["a b x d"]])
    assert scores["tokenizer"] == "ptb" and scores["METEOR"] is None and "2 GB" in scores["meteor_error"]
    assert 100 * scores["ROUGE-L"] == pytest.approx(75.0)


# --------------------------------------------------------------------------------------------------
# RefCOCO
# --------------------------------------------------------------------------------------------------


def refcoco_files(tmp_path: Path, as_json: bool = False) -> dict[str, Path]:
    images = write_images(tmp_path / "train2014", ["COCO_1.png", "COCO_2.png"], size=(40, 30))
    instances = {
        "images": [
            {"id": 1, "file_name": "COCO_1.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "COCO_2.png", "width": 40, "height": 30},
        ],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "segmentation": [square(0, 0, 10)]},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [20, 10, 10, 10], "segmentation": [square(20, 10, 10)]},
            # an RLE segmentation: rows 0-9 of columns 0-9 (column-major runs)
            {"id": 21, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10],
             "segmentation": {"size": [30, 40], "counts": [0] + [10, 20] * 9 + [10, 20 + 30 * 30]}},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }  # fmt: skip
    refs = [
        {"ref_id": 0, "ann_id": 11, "image_id": 1, "split": "val",
         "sentences": [{"sent": "left box", "raw": "Left box.", "sent_id": 0},
                       {"sent": "top left", "raw": "Top left", "sent_id": 1}]},
        {"ref_id": 1, "ann_id": 12, "image_id": 1, "split": "val",
         "sentences": [{"sent": "right box", "raw": "Right box", "sent_id": 2}]},
        {"ref_id": 2, "ann_id": 21, "image_id": 2, "split": "val",
         "sentences": [{"sent": "the   box", "raw": "The box", "sent_id": 3}]},
        {"ref_id": 3, "ann_id": 21, "image_id": 2, "split": "testA",
         "sentences": [{"sent": "other", "raw": "Other", "sent_id": 4}]},
    ]  # fmt: skip
    folder = tmp_path / "refcoco"
    write_json(folder / "instances.json", instances)
    if as_json:
        refs_path = write_json(folder / "refs.json", refs)
    else:
        refs_path = folder / "refs(unc).p"
        refs_path.write_bytes(pickle.dumps(refs, protocol=2))
    return {"refs": refs_path, "instances": folder / "instances.json", "images": images}


def rec_table(boxes: dict[tuple[str, str], list[float]], task="<CAPTION_TO_PHRASE_GROUNDING>"):
    table = {}
    for (image, text), box in boxes.items():
        if task == "<OPEN_VOCABULARY_DETECTION>":
            table[(image, task, text)] = {**TablePredictor.EMPTY[task], "bboxes": [box], "bboxes_labels": [text]}
        else:  # the first box decides, whatever follows
            table[(image, task, text)] = {"bboxes": [box, [0, 0, 40, 30]], "labels": [text, "image"]}
    return table


GT_BOXES = {
    ("COCO_1.png", "left box"): [0, 0, 10, 10],
    ("COCO_1.png", "top left"): [0, 0, 10, 10],
    ("COCO_1.png", "right box"): [20, 10, 30, 20],
    ("COCO_2.png", "the box"): [0, 0, 10, 10],
}


def test_refcoco_reader_pickle_and_json_agree(tmp_path: Path):
    pickled = read_refcoco_expressions(**refcoco_files(tmp_path / "p"))
    from_json = read_refcoco_expressions(**refcoco_files(tmp_path / "j", as_json=True))
    assert [(s.id, s.text, s.truth["bbox"]) for s in pickled] == [(s.id, s.text, s.truth["bbox"]) for s in from_json]
    assert [s.id for s in pickled] == ["0:0", "0:1", "1:2", "2:3"] and pickled[3].text == "the box"
    assert pickled[0].size == (40, 30) and pickled[2].truth["bbox"] == [20.0, 10.0, 30.0, 20.0]
    raw = read_refcoco_expressions(**refcoco_files(tmp_path / "r"), sentence_key="raw")
    assert raw[0].text == "Left box."
    test_a = read_refcoco_expressions(**refcoco_files(tmp_path / "t"), split="testA")
    assert [s.text for s in test_a] == ["other"]


def test_refcoco_perfect_and_partial(tmp_path: Path):
    files = refcoco_files(tmp_path)
    res_perfect = {
        ("COCO_1.png", "<REFERRING_EXPRESSION_SEGMENTATION>", t): {"polygons": [[square(0, 0, 10)]], "labels": [""]}
        for t in ("left box", "top left")
    }
    res_perfect[("COCO_1.png", "<REFERRING_EXPRESSION_SEGMENTATION>", "right box")] = {
        "polygons": [[square(20, 10, 10)]],
        "labels": [""],
    }
    res_perfect[("COCO_2.png", "<REFERRING_EXPRESSION_SEGMENTATION>", "the box")] = {
        "polygons": [[square(0, 0, 10)]],
        "labels": [""],
    }
    perfect = TablePredictor({**rec_table(GT_BOXES), **res_perfect})
    summary = evaluate_refcoco(perfect, **files, out_dir=tmp_path / "out")
    assert summary["figures"] == pytest.approx({"REC_accuracy": 100.0, "RES_mIoU": 100.0, "RES_oIoU": 100.0,
                                                "RES_P@0.5": 100.0})  # fmt: skip
    assert summary["counts"] == {"expressions": 4, "refs": 3, "images": 2}
    assert summary["settings"]["dataset"] == "refcoco"
    lines = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and lines[0]["correct"] and lines[0]["iou"] == 1.0 and lines[4]["iou"] == 1.0

    # REC: "top left" misses (IoU 25/175 < 0.5), "right box" answered by nothing -> 2 of 4
    partial_boxes = {**GT_BOXES, ("COCO_1.png", "top left"): [5, 5, 15, 15]}
    del partial_boxes[("COCO_1.png", "right box")]
    # RES: "left box" shifted by half its width: 50 / 150; the others perfect or empty
    res_partial = dict(res_perfect)
    res_partial[("COCO_1.png", "<REFERRING_EXPRESSION_SEGMENTATION>", "left box")] = {
        "polygons": [[square(5, 0, 10)]],
        "labels": [""],
    }
    del res_partial[("COCO_1.png", "<REFERRING_EXPRESSION_SEGMENTATION>", "right box")]
    summary = evaluate_refcoco(TablePredictor({**rec_table(partial_boxes), **res_partial}), **files)
    assert summary["figures"]["REC_accuracy"] == pytest.approx(50.0)
    assert summary["figures"]["RES_mIoU"] == pytest.approx(100 * (1 / 3 + 1 + 0 + 1) / 4)
    # oIoU: intersections 50 + 100 + 0 + 100, unions 150 + 100 + 100 + 100
    assert summary["figures"]["RES_oIoU"] == pytest.approx(100 * 250 / 450)
    assert summary["figures"]["RES_P@0.5"] == pytest.approx(50.0)

    ovd = TablePredictor(rec_table(GT_BOXES, "<OPEN_VOCABULARY_DETECTION>"))
    summary = evaluate_refcoco(ovd, **files, tasks=["rec"], rec_task="OPEN_VOCABULARY_DETECTION")
    assert summary["figures"] == {"REC_accuracy": pytest.approx(100.0)}
    assert summary["settings"]["task"] == "<OPEN_VOCABULARY_DETECTION>"
    with pytest.raises(ValueError, match="answering boxes"):
        evaluate_refcoco(ovd, **files, rec_task="<OD>")
    with pytest.raises(ValueError, match="rec"):
        evaluate_refcoco(ovd, **files, tasks=["det"])


# --------------------------------------------------------------------------------------------------
# Flickr30k Entities
# --------------------------------------------------------------------------------------------------


def flickr_files(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "flickr30k_entities"
    (root / "Annotations").mkdir(parents=True)
    (root / "Sentences").mkdir(parents=True)
    images = write_images(tmp_path / "flickr30k-images", ["100.jpg"], size=(100, 80))
    (root / "Annotations" / "100.xml").write_text(
        "<annotation><filename>100.jpg</filename><size><width>100</width><height>80</height><depth>3</depth></size>"
        "<object><name>1</name><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>20</xmax><ymax>40</ymax></bndbox></object>"
        "<object><name>2</name><name>3</name><bndbox><xmin>50</xmin><ymin>10</ymin><xmax>60</xmax><ymax>20</ymax>"
        "</bndbox></object>"
        "<object><name>3</name><bndbox><xmin>80</xmin><ymin>50</ymin><xmax>90</xmax><ymax>60</ymax></bndbox></object>"
        "<object><name>4</name><nobndbox>1</nobndbox></object>"
        "</annotation>"
    )
    (root / "Sentences" / "100.txt").write_text(
        "[/EN#1/people A man] feeds [/EN#2/animals a bird] near [/EN#3/other two birds] in [/EN#4/scene the park] .\n"
        "[/EN#0/notvisual It] is [/EN#1/people a man] .\n"
    )
    (root / "test.txt").write_text("100\n")
    return {"root": root, "images": images}


def grounding(pairs):
    return {"bboxes": [box for _, box in pairs], "labels": [label for label, _ in pairs]}


def test_flickr30k_reader(tmp_path: Path):
    samples = read_flickr30k(**flickr_files(tmp_path))
    assert [s.text for s in samples] == ["A man feeds a bird near two birds in the park .", "It is a man ."]
    assert samples[0].truth == [
        ("A man", [[0.0, 0.0, 20.0, 40.0]]),
        ("a bird", [[50.0, 10.0, 60.0, 20.0]]),
        ("two birds", [[50.0, 10.0, 60.0, 20.0], [80.0, 50.0, 90.0, 60.0]]),
    ]  # "the park" has no box, "It" is not visual
    assert samples[1].truth == [("a man", [[0.0, 0.0, 20.0, 40.0]])] and samples[0].size == (100, 80)


def test_flickr30k_perfect_partial_and_protocols(tmp_path: Path):
    files = flickr_files(tmp_path)
    sentence, second = "A man feeds a bird near two birds in the park .", "It is a man ."
    task = "<CAPTION_TO_PHRASE_GROUNDING>"
    perfect = {
        ("100.jpg", task, sentence): grounding(
            [("A man", [0, 0, 20, 40]), ("a bird", [50, 10, 60, 20]), ("two birds", [50, 10, 90, 60])]
        ),
        ("100.jpg", task, second): grounding([("a man", [1, 1, 20, 40])]),
    }
    # "two birds" answered with the union box: a hit only under the merged protocol; with one of
    # its boxes: a hit only under any-box
    summary = evaluate_flickr30k(TablePredictor(perfect), **files, protocol="merged", out_dir=tmp_path / "out")
    assert summary["figures"]["recall@1"] == pytest.approx(100.0)
    assert summary["counts"] == {"sentences": 2, "phrases": 4, "images": 1}
    summary = evaluate_flickr30k(TablePredictor(perfect), **files)
    assert summary["figures"]["recall@1"] == pytest.approx(75.0)
    lines = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [(line["phrases"], line["hits"]) for line in lines] == [(3, 3), (1, 1)]

    one_bird = dict(perfect)
    one_bird[("100.jpg", task, sentence)] = grounding(
        [("a man", [0, 0, 20, 40]), ("two birds", [80, 50, 90, 60]), ("a bird", [0, 40, 20, 80])]
    )  # case differs (still a hit), "a bird" misplaced
    assert evaluate_flickr30k(TablePredictor(one_bird), **files)["figures"]["recall@1"] == pytest.approx(75.0)
    merged = evaluate_flickr30k(TablePredictor(one_bird), **files, protocol="merged")
    assert merged["figures"]["recall@1"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="protocol"):
        evaluate_flickr30k(TablePredictor({}), **files, protocol="all")


# --------------------------------------------------------------------------------------------------
# OCR
# --------------------------------------------------------------------------------------------------


def test_ocr_perfect_partial_and_both_layouts(tmp_path: Path):
    images = write_images(tmp_path / "images", ["a.png", "b.png"])
    truth = {"a.png": "HELLO\nWORLD", "b.png": "STOP"}
    annotations = tmp_path / "ocr.jsonl"
    annotations.write_text("".join(json.dumps({"image": n, "text": t}) + "\n" for n, t in truth.items()) + "\n")
    perfect = TablePredictor({(n, "<OCR>", None): t.replace("\n", " ") for n, t in truth.items()})
    summary = evaluate_ocr(perfect, annotations, images, tmp_path / "out")
    assert summary["figures"] == {"exact_match": 100.0, "CER": 0.0, "WER": 0.0}
    assert summary["counts"] == {"images": 2, "characters": 15}
    # "HELLO WORD": one character (of 11) and one word (of 2) wrong; "STOP" exact
    partial = TablePredictor({("a.png", "<OCR>", None): "HELLO WORD", ("b.png", "<OCR>", None): "STOP"})
    summary = evaluate_ocr(partial, annotations, images)
    assert summary["figures"] == pytest.approx({"exact_match": 50.0, "CER": 100 / 15, "WER": 100 / 3})
    # the same ground truth as images with same-name .txt files
    for name, text in truth.items():
        (images / name).with_suffix(".txt").write_text(text)
    assert [s.truth for s in read_ocr_references(images=images)] == list(truth.values())
    assert evaluate_ocr(partial, images=images)["figures"] == summary["figures"]
    # paths default to the annotation file's folder
    shutil.copy(annotations, images / "ocr.jsonl")
    assert len(read_ocr_references(images / "ocr.jsonl")) == 2


# --------------------------------------------------------------------------------------------------
# Malformed files: errors name the file and the field
# --------------------------------------------------------------------------------------------------


def _break_coco(tmp_path, change):
    data = coco_gt()
    change(data)
    images = write_images(tmp_path / "val", [f"{i:03d}.png" for i in (1, 2, 3)])
    return write_json(tmp_path / "instances_bad.json", data), images


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d.pop("annotations"), "missing top-level field 'annotations'"),
        (lambda d: d["annotations"][2].update(bbox=[1, 2, 3]), "annotations[2].bbox: expected 4 numbers"),
        (lambda d: d["annotations"][1].update(bbox=[1, 2, -3, 4]), "annotations[1].bbox: negative"),
        (lambda d: d["annotations"][0].update(category_id=5), "annotations[0].category_id: no category with id 5"),
        (lambda d: d["annotations"][0].update(image_id=9), "annotations[0].image_id: no image with id 9"),
        (lambda d: d["annotations"][3].update(id=0), "annotations[3].id: ids must be > 0"),
        (lambda d: d["annotations"][3].update(id=1), "annotations[3].id: duplicate id"),
        (lambda d: d["annotations"][4].pop("image_id"), "annotations[4]: missing field 'image_id'"),
        (lambda d: d["images"][1].update(width="100"), "images[1].width: expected int"),
        (lambda d: d["images"][2].update(file_name="missing.png"), "images[2].file_name: image 'missing.png' not"),
        (lambda d: d["categories"][1].pop("name"), "categories[1]: missing field 'name'"),
    ],
)
def test_malformed_coco_files(tmp_path: Path, change, field):
    annotations, images = _break_coco(tmp_path, change)
    with pytest.raises(AnnotationError, match=re.escape(f"instances_bad.json: {field}")):
        read_coco_detection(annotations, images)


def test_malformed_files_of_every_reader(tmp_path: Path):
    images = write_images(tmp_path / "images", ["a.png"])

    def fails(match, call):
        with pytest.raises(AnnotationError, match=match):
            call()

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    fails(r"bad\.json:1: malformed JSON", lambda: read_coco_detection(bad, images))
    fails(r"bad\.json:1: malformed JSON", lambda: read_caption_references(bad, images))
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        read_caption_references(tmp_path / "nowhere.json", images)

    odd = write_json(tmp_path / "odd.json", {"info": {}})
    fails(r"odd\.json: not a caption file", lambda: read_caption_references(odd, images))
    captions = write_json(
        tmp_path / "captions_x.json",
        {
            "images": [{"id": 1, "file_name": "a.png"}],
            "annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 1}],
        },
    )
    fails(
        r"captions_x\.json: annotations\[1\]: missing field 'caption'",
        lambda: read_caption_references(captions, images),
    )
    fails(
        r"captions_x\.json: --split selects Karpathy", lambda: read_caption_references(captions, images, split="test")
    )

    refcoco = refcoco_files(tmp_path / "ref")
    refs = pickle.loads(refcoco["refs"].read_bytes())
    refs[1].pop("split")
    refcoco["refs"].write_bytes(pickle.dumps(refs))
    fails(r"refs\(unc\)\.p: refs\[1\]: missing field 'split'", lambda: read_refcoco_expressions(**refcoco))
    refs[1]["split"], refs[1]["ann_id"] = "val", 999
    refcoco["refs"].write_bytes(pickle.dumps(refs))
    fails(r"refs\(unc\)\.p: refs\[1\]\.ann_id: no annotation 999", lambda: read_refcoco_expressions(**refcoco))
    fails(
        r"no ref of split 'testB'; splits in the file: testA, val",
        lambda: read_refcoco_expressions(**refcoco, split="testB"),
    )
    refcoco["refs"].write_bytes(pickle.dumps([Path("x")]))  # a class inside: refused, not loaded
    fails(r"refs\(unc\)\.p: not a refs pickle: refusing to load", lambda: read_refcoco_expressions(**refcoco))

    flickr = flickr_files(tmp_path / "flickr")
    (flickr["root"] / "Annotations" / "100.xml").write_text("<annotation><size>")
    fails(r"100\.xml: malformed XML", lambda: read_flickr30k(**flickr))
    (flickr["root"] / "Annotations" / "100.xml").write_text("<annotation><size><width>9</width></size></annotation>")
    fails(r"100\.xml: size: expected", lambda: read_flickr30k(**flickr))
    (flickr["root"] / "Sentences" / "100.txt").unlink()
    fails(r"test\.txt:1: image 100: .*100\.txt not found", lambda: read_flickr30k(**flickr))

    ocr = tmp_path / "ocr.jsonl"
    ocr.write_text('{"image": "a.png", "text": "A"}\n{"image": "a.png"}\n')
    fails(r"ocr\.jsonl:2: missing field 'text'", lambda: read_ocr_references(ocr, images))
    ocr.write_text('{"image": "a.png", "text": "A"}\n{"image": "b.png", "text": "B"}\n')
    fails(r"ocr\.jsonl:2: image: 'b\.png' not found", lambda: read_ocr_references(ocr, images))
    ocr.write_text('{"image": "a.png", "text": "A"}\n{oops\n')
    fails(r"ocr\.jsonl:2: malformed JSON", lambda: read_ocr_references(ocr, images))
    fails(r"no image with a \.txt transcription", lambda: read_ocr_references(images=images))


# --------------------------------------------------------------------------------------------------
# End to end: a synthetic split, exported, through every runner with the embedded model
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_thread():
    # The embedded model is tiny: one thread is faster than two on a shared machine.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def export(tmp_path_factory, one_thread) -> Path:
    from florence2.cli import main

    out = tmp_path_factory.mktemp("bench")
    assert main(["eval", "export", "--num-images", "3", "--seed", "5", "--out", str(out)]) == 0
    return out


RUN = ["--num-beams", "1", "--max-new-tokens", "24", "--no-progress"]


def _same_command(recorded: str, words: list[str]) -> bool:
    """Whether the recorded command line parses to the same options as ``words``."""
    from florence2.cli import build_parser

    def options(argv):
        args = vars(build_parser().parse_args(argv[1:]))
        return {k: v for k, v in args.items() if k not in ("func", "eval_parser", "progress")}

    return options(shlex.split(recorded)) == options(words)


@needs_coco
@needs_evalcap
def test_every_runner_end_to_end_with_the_embedded_model(export: Path, capsys):
    from florence2.cli import main
    from florence2.eval.export import export_all

    capsys.readouterr()
    paths = export_all(export / "split", export)  # the same files again (idempotent)
    commands = eval_cli.export_commands(paths, export / "results")
    commands["captions"].append("--no-java")
    expected_samples = {
        "coco-det": 3,
        "captions": 3,
        "refcoco": 2 * len(read_refcoco_expressions(paths["refs"], paths["refcoco_instances"], paths["images"])),
        "flickr30k": len(read_flickr30k(paths["flickr30k"], paths["images"])),
        "ocr": len(read_ocr_references(paths["ocr"], paths["images"])),
    }
    for name, words in commands.items():
        assert words[:3] == ["florence2", "eval", name]
        assert main([*words[1:], *RUN]) == 0, name
        printed = capsys.readouterr().out
        folder = export / "results" / name
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["benchmark"] == name and printed.startswith(f"# {summary['title']}")
        assert _same_command(summary["command"], [*words, *RUN]), name
        assert summary["settings"]["decoding"] == {"num_beams": 1, "max_new_tokens": 24}
        for figure, value in summary["figures"].items():
            assert (
                value is None
                or 0.0 <= value <= (1000.0 if figure == "CIDEr" else 100.0)
                or figure
                in (
                    "CER",
                    "WER",
                )
            ), (name, figure, value)
        lines = (folder / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == expected_samples[name], name
        assert (folder / "summary.md").read_text() == benchmarks.format_summary(summary)
    # the detector's boxes carry the model's scores, so coco-det reports the constant-score figures too
    figures = {n: json.loads((export / "results" / n / "summary.json").read_text())["figures"] for n in commands}
    coco = json.loads((export / "results" / "coco-det" / "summary.json").read_text())
    assert coco["settings"]["scores"] == "model" and "AP_unit_scores" in figures["coco-det"]

    # the runners on the exported files measure what the synthetic evaluation measures on the split
    from florence2 import Florence2
    from florence2.data.synthetic import read_split
    from florence2.eval.synthetic import evaluate_synthetic

    tasks = ["<OD>", "<REFERRING_EXPRESSION_SEGMENTATION>", "<OCR>", "<CAPTION_TO_PHRASE_GROUNDING>"]
    report = evaluate_synthetic(
        Florence2.from_pretrained(),
        read_split(export / "split"),
        export / "split",
        tasks=tasks,
        progress=False,
        decoding={"num_beams": 1, "max_new_tokens": 24},
    )
    pairs = [
        (figures["coco-det"]["AP"], report["od_mAP"]),
        (figures["coco-det"]["AP50"], report["od_mAP50"]),
        (figures["refcoco"]["RES_mIoU"], report["referring_mIoU"]),
        (figures["refcoco"]["RES_oIoU"], report["referring_oIoU"]),
        (figures["ocr"]["CER"], report["ocr_cer"]),
        (figures["ocr"]["exact_match"], report["ocr_exact_match"]),
        (figures["flickr30k"]["recall@1"], report["grounding_recall@1"]),
    ]
    assert [ours for ours, _ in pairs] == pytest.approx([100 * theirs for _, theirs in pairs])


@needs_coco
def test_synthetic_export_matches_the_split(export: Path):
    from florence2.data.synthetic import read_split

    records = read_split(export / "split")
    data = read_coco_detection(export / "annotations" / "instances_synthetic.json", export / "images")
    assert len(data.samples) == len(records)
    assert len(data.dataset["annotations"]) == sum(len(r["objects"]) for r in records)
    first = data.dataset["annotations"][0]
    x0, y0, x1, y1 = records[0]["objects"][0]["bbox"]
    assert first["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
    # perfect answers from the records score 100 through the exported files
    names = {c["id"]: c["name"] for c in data.dataset["categories"]}
    table = {}
    for sample in data.samples:
        anns = [a for a in data.dataset["annotations"] if a["image_id"] == sample.image_id]
        table[(sample.image.name, "<OD>", None)] = od_result([(names[a["category_id"]], a["bbox"], 1.0) for a in anns])
    summary = evaluate_coco_detection(
        TablePredictor(table), export / "annotations" / "instances_synthetic.json", export / "images"
    )
    assert summary["figures"]["AP"] == pytest.approx(100.0)
    refs = read_refcoco_expressions(
        export / "refcoco" / "refs(unc).p", export / "refcoco" / "instances.json", export / "images"
    )
    assert [s.text for s in refs] == [o["referring"] for r in records for o in r["objects"] if o.get("referring")]
    gt = copy.deepcopy(refs[0].truth)
    assert np.allclose(gt["bbox"], records[0]["objects"][0]["bbox"])
