import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from florence2.data.samples import OCR_LINE_SEPARATOR, build_samples
from florence2.data.synthetic import SyntheticWorld, WorldConfig, polygon_mask, read_split, write_split
from florence2.errors import TaskError
from florence2.eval import cli as eval_cli
from florence2.eval.metrics import (
    box_iou,
    caption_category_recall,
    cider_available,
    cider_d,
    coco_detection_dicts,
    coco_detection_map,
    edit_distance,
    grounding_recall_at_1,
    mask_iou,
    normalize_text,
    ocr_region_scores,
    ocr_scores,
    polygon_iou,
    rasterize_polygons,
    referring_miou,
    tokenize_caption,
)
from florence2.eval.synthetic import DEFAULT_TASKS, TARGETS, check_targets, evaluate_synthetic, evaluated_tasks
from florence2.image import load_image
from florence2.parsing import post_process_generation
from florence2.tasks import build_prompt, get_task

try:
    import pycocotools  # noqa: F401

    HAVE_COCO = True
except ImportError:
    HAVE_COCO = False
needs_coco = pytest.mark.skipif(not HAVE_COCO, reason="detection mAP needs pycocotools (the eval extra)")


def square(x0, y0, side):
    return [x0, y0, x0 + side, y0, x0 + side, y0 + side, x0, y0 + side]


def record(objects, width=100, height=100, texts=()):
    return {"image": "x.png", "width": width, "height": height, "objects": list(objects), "texts": list(texts)}


def obj(category, bbox, **extra):
    return {"category": category, "bbox": list(bbox), **extra}


# --------------------------------------------------------------------------------------------------
# Boxes and masks
# --------------------------------------------------------------------------------------------------


def test_box_iou_known_values():
    iou = box_iou([0, 0, 10, 10], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 10]])
    np.testing.assert_allclose(iou, [[1.0, 1 / 3, 0.0, 0.0]])
    assert box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)


def test_rasterize_two_squares_known_overlap():
    a = rasterize_polygons(square(0, 0, 10), (20, 20))
    b = rasterize_polygons(square(5, 0, 10), (20, 20))
    assert a.shape == (20, 20) and a.sum() == 100 and b.sum() == 100
    assert a[:10, :10].all()
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert polygon_iou(square(0, 0, 10), square(5, 0, 10), (20, 20)) == pytest.approx(1 / 3)
    # sub-pixel offsets: a pixel counts when its centre is inside
    assert rasterize_polygons(square(0.4, 0.4, 10), (20, 20)).sum() == 100
    assert rasterize_polygons(square(0.6, 0.6, 10), (20, 20))[1:11, 1:11].all()


def test_rasterize_accepts_every_nesting_and_skips_degenerate():
    flat = square(2, 2, 4)
    one = rasterize_polygons(flat, (10, 10))
    assert one.sum() == 16
    assert (rasterize_polygons([flat], (10, 10)) == one).all()
    assert (rasterize_polygons([[flat]], (10, 10)) == one).all()
    union = rasterize_polygons([[square(0, 0, 4)], [square(2, 2, 4)]], (10, 10))
    assert union.sum() == 16 + 16 - 4
    assert not rasterize_polygons([], (10, 10)).any()
    assert not rasterize_polygons([1, 1, 5, 5], (10, 10)).any()  # two vertices: no area
    assert rasterize_polygons(square(-5, -5, 100), (10, 10)).all()  # clipped to the image


def test_rasterize_matches_the_synthetic_world_masks():
    world = SyntheticWorld(WorldConfig(image_size=96), seed=3)
    for index in range(4):
        _, rec = world.scene(index)
        for item in rec["objects"]:
            expected = polygon_mask(np.asarray(item["polygon"]).reshape(-1, 2), 96, 96)
            assert (rasterize_polygons(item["polygon"], (96, 96)) == expected).all()


def test_mask_iou_empty_is_zero():
    empty = np.zeros((4, 4), dtype=bool)
    assert mask_iou(empty, empty) == 0.0


def test_referring_miou():
    size = (20, 20)
    perfect = referring_miou([([[square(0, 0, 10)]], square(0, 0, 10), size)])
    assert perfect == {"mIoU": 1.0, "oIoU": 1.0, "P@0.5": 1.0}
    figures = referring_miou(
        [
            ([[square(5, 0, 10)]], square(0, 0, 10), size),  # IoU 1/3
            ([], square(0, 0, 10), size),  # nothing predicted: 0
        ]
    )
    assert figures["mIoU"] == pytest.approx(1 / 6)
    assert figures["oIoU"] == pytest.approx(50 / (150 + 100))
    assert figures["P@0.5"] == 0.0
    assert referring_miou([]) == {"mIoU": None, "oIoU": None, "P@0.5": None}


# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------


@needs_coco
def test_map_perfect_and_shifted():
    gt = [record([obj("circle", [10, 10, 30, 30]), obj("star", [50, 50, 90, 80])])]
    perfect = [{"bboxes": [[10, 10, 30, 30], [50, 50, 90, 80]], "labels": ["circle", "star"]}]
    assert coco_detection_map(gt, perfect) == pytest.approx({"mAP": 1.0, "mAP50": 1.0, "mAP75": 1.0})
    # shifted right by half their width: IoU (w / 2) / (3 w / 2) = 1/3 < 0.5
    shifted = [{"bboxes": [[20, 10, 40, 30], [70, 50, 110, 80]], "labels": ["circle", "star"]}]
    np.testing.assert_allclose(box_iou(shifted[0]["bboxes"], [[10, 10, 30, 30], [50, 50, 90, 80]]).diagonal(), 1 / 3)
    assert coco_detection_map(gt, shifted) == {"mAP": 0.0, "mAP50": 0.0, "mAP75": 0.0}
    # right box, wrong label
    assert coco_detection_map(gt, [{"bboxes": [[10, 10, 30, 30]], "labels": ["star"]}])["mAP50"] == 0.0


@needs_coco
def test_map_known_partial_values():
    # one of two circles found: precision 1 up to recall 0.5 -> 51 of the 101 recall points
    gt = [record([obj("circle", [0, 0, 20, 20]), obj("circle", [50, 50, 70, 70])])]
    found_one = [{"bboxes": [[0, 0, 20, 20]], "labels": ["circle"]}]
    assert coco_detection_map(gt, found_one)["mAP50"] == pytest.approx(51 / 101)
    # a false positive scored above the true positive: precision 1/2 at recall 1
    gt = [record([obj("circle", [0, 0, 20, 20])])]
    ranked = [{"bboxes": [[60, 60, 80, 80], [0, 0, 20, 20]], "labels": ["circle", "circle"], "scores": [0.9, 0.8]}]
    assert coco_detection_map(gt, ranked)["mAP50"] == pytest.approx(0.5)
    ranked[0]["scores"] = [0.8, 0.9]
    assert coco_detection_map(gt, ranked)["mAP50"] == pytest.approx(1.0)


@needs_coco
def test_map_edge_cases():
    gt = [record([obj("circle", [0, 0, 20, 20])]), record([])]
    nothing = [{"bboxes": [], "labels": []}, {}]
    assert coco_detection_map(gt, nothing) == {"mAP": 0.0, "mAP50": 0.0, "mAP75": 0.0}
    assert coco_detection_map([record([])], [{"bboxes": [[0, 0, 5, 5]], "labels": ["x"]}])["mAP"] is None
    # missing scores mean 1.0 for every box
    boxes = {"bboxes": [[0, 0, 20, 20], [1, 1, 21, 21]], "labels": ["circle", "circle"]}
    assert coco_detection_map(gt[:1], [boxes]) == coco_detection_map(gt[:1], [{**boxes, "scores": [1.0, 1.0]}])
    # a label no ground truth has cannot match, and does not count against the others
    extra = {"bboxes": [[0, 0, 20, 20], [40, 40, 60, 60]], "labels": ["circle", "blob"]}
    assert coco_detection_map(gt[:1], [extra])["mAP50"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        coco_detection_map(gt, nothing[:1])


@needs_coco
def test_map_equals_cocoeval_on_json_files(tmp_path: Path):
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    categories = ["circle", "star", "heart"]
    records, predictions = [], []
    for _ in range(6):
        objects, boxes, labels, scores = [], [], [], []
        for _ in range(int(rng.integers(0, 5))):
            x, y = rng.uniform(0, 150, size=2)
            w, h = rng.uniform(8, 50, size=2)
            category = str(rng.choice(categories))
            objects.append(obj(category, [x, y, x + w, y + h]))
            if rng.random() < 0.8:  # found, more or less well, sometimes with the wrong label
                jitter = rng.normal(0, 4, size=4)
                boxes.append([x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]])
                labels.append(category if rng.random() < 0.85 else str(rng.choice(categories)))
                scores.append(float(rng.uniform(0.3, 1.0)))
        for _ in range(int(rng.integers(0, 3))):  # false positives
            x, y = rng.uniform(0, 150, size=2)
            boxes.append([x, y, x + 20, y + 20])
            labels.append(str(rng.choice(categories)))
            scores.append(float(rng.uniform(0.0, 0.9)))
        records.append(record(objects, 200, 200))
        predictions.append({"bboxes": boxes, "labels": labels, "scores": scores})

    gt_dict, results = coco_detection_dicts(records, predictions)
    (tmp_path / "gt.json").write_text(json.dumps(gt_dict))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(tmp_path / "gt.json"))
        coco_dt = coco_gt.loadRes(str(tmp_path / "dt.json"))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ours = coco_detection_map(records, predictions)
    assert 0.0 < ours["mAP"] < ours["mAP50"] < 1.0
    assert [ours["mAP"], ours["mAP50"], ours["mAP75"]] == pytest.approx(list(evaluator.stats[:3]), abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Grounding
# --------------------------------------------------------------------------------------------------


def test_grounding_recall_at_1():
    truth = [("a red circle", [[0, 0, 10, 10]]), ("two stars", [[20, 20, 30, 30], [50, 50, 60, 60]])]
    perfect = {"bboxes": [[0, 0, 10, 10], [50, 50, 60, 60]], "labels": ["a red circle", "two stars"]}
    assert grounding_recall_at_1([(perfect, truth)]) == {"recall@1": 1.0, "phrases": 2}
    # only the first box of a phrase counts: a wrong first box is a miss even if a later one is right
    first_wrong = {
        "bboxes": [[0, 0, 10, 10], [80, 80, 90, 90], [20, 20, 30, 30]],
        "labels": ["A  Red Circle", "two stars", "two stars"],
    }
    assert grounding_recall_at_1([(first_wrong, truth)]) == {"recall@1": 0.5, "phrases": 2}
    # IoU exactly 0.5 is a hit, just below is not
    half = {"bboxes": [[0, 0, 10, 5]], "labels": ["a red circle"]}
    assert grounding_recall_at_1([(half, truth[:1])])["recall@1"] == 1.0
    below = {"bboxes": [[0, 0, 10, 4.9]], "labels": ["a red circle"]}
    assert grounding_recall_at_1([(below, truth[:1])])["recall@1"] == 0.0
    assert grounding_recall_at_1([({"bboxes": [], "labels": []}, truth)])["recall@1"] == 0.0
    assert grounding_recall_at_1([]) == {"recall@1": None, "phrases": 0}


# --------------------------------------------------------------------------------------------------
# OCR
# --------------------------------------------------------------------------------------------------


def test_edit_distance_literals():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("flaw", "lawn") == 2
    assert edit_distance("same", "same") == 0
    assert edit_distance("a b c".split(), "a c".split()) == 1


def test_ocr_scores_literals():
    assert normalize_text(" STOP\n  SALE ") == "STOP SALE"
    assert ocr_scores([("STOP SALE", "STOP" + OCR_LINE_SEPARATOR + "SALE")]) == {
        "exact_match": 1.0,
        "cer": 0.0,
        "wer": 0.0,
        "count": 1,
    }
    figures = ocr_scores([("kitten", "sitting"), ("OPEN 42", "OPEN 42")])
    assert figures["exact_match"] == 0.5
    assert figures["cer"] == pytest.approx(3 / (7 + 7))  # corpus level: 3 edits over 14 characters
    assert figures["wer"] == pytest.approx(1 / 3)
    empty = ocr_scores([("", "TAXI")])
    assert empty["exact_match"] == 0.0 and empty["cer"] == 1.0 and empty["wer"] == 1.0
    assert ocr_scores([])["exact_match"] is None


def test_ocr_region_scores():
    truth = {"quad_boxes": [[0, 0, 40, 0, 40, 10, 0, 10], [0, 50, 30, 50, 30, 60, 0, 60]], "labels": ["STOP", "42"]}
    assert ocr_region_scores([(truth, truth)]) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "lines": 2}
    half = {"quad_boxes": [[0, 0, 40, 0, 40, 10, 0, 10], [0, 50, 30, 50, 30, 60, 0, 60]], "labels": ["STOP", "43"]}
    figures = ocr_region_scores([(half, truth)])
    assert figures["precision"] == 0.5 and figures["recall"] == 0.5 and figures["f1"] == 0.5
    misplaced = {"quad_boxes": [[60, 60, 90, 60, 90, 70, 60, 70]], "labels": ["STOP"]}
    assert ocr_region_scores([(misplaced, truth)])["recall"] == 0.0
    assert ocr_region_scores([({"quad_boxes": [], "labels": []}, truth)])["precision"] is None


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------


def test_caption_category_recall_with_plurals():
    records = [
        record([obj("circle", [0, 0, 1, 1]), obj("circle", [2, 2, 3, 3]), obj("cross", [4, 4, 5, 5])]),
        record([obj("star", [0, 0, 1, 1]), obj("heart", [2, 2, 3, 3])]),
        record([]),  # not scored
    ]
    captions = ["Two red circles and a blue cross.", "A start of something, and a heart and a square.", "Nothing."]
    figures = caption_category_recall(records, captions, categories=["circle", "cross", "star", "heart", "square"])
    assert figures["images"] == 2
    assert figures["all_named"] == 0.5  # "start" is not "star"
    assert figures["category_recall"] == pytest.approx((1.0 + 0.5) / 2)
    assert figures["category_precision"] == pytest.approx(3 / 4)  # the square is not there
    crosses = caption_category_recall([record([obj("cross", [0, 0, 1, 1])])], ["Three CROSSES."])
    assert crosses["all_named"] == 1.0
    assert caption_category_recall([record([])], ["x"])["all_named"] is None


def test_tokenize_caption():
    assert tokenize_caption('Two red circles, and a "STOP" sign.') == "two red circles and a stop sign"


def test_cider_d():
    if not cider_available():
        with pytest.raises(ImportError, match="eval"):
            cider_d(["a"], [["a"]])
        return
    refs = [["a red circle and a blue star"], ["two green hearts"], ["a black cross on the left"]]
    perfect = cider_d([r[0] for r in refs], refs)
    worse = cider_d(["a red circle", "two hearts", "a cross"], refs)
    assert perfect > worse > 0.0
    assert cider_d(["", "", ""], refs) == 0.0
    assert cider_d([], []) is None


# --------------------------------------------------------------------------------------------------
# The synthetic benchmark, with predictors that answer from the annotations
# --------------------------------------------------------------------------------------------------


def _key(image) -> str:
    return hashlib.sha1(load_image(image).tobytes()).hexdigest()


class AnnotationPredictor:
    """Answers every query with its training target parsed back, or with nothing (``empty=True``)."""

    def __init__(self, records, image_dir, empty=False):
        self.records = {_key(Path(image_dir) / r["image"]): r for r in records}
        self.empty = empty
        self.calls = []

    def predict(self, images, task, text=None, region=None, *, batch_size=8, progress=False, **decoding):
        tasks = [task] if isinstance(task, str) else list(task)
        self.calls.append((len(images), tuple(tasks), text, decoding))
        texts = text if isinstance(text, list) else [text] * len(images)  # one text per image, or one for all
        results = []
        for image, image_text in zip(images, texts):
            rec = self.records[_key(image)]
            result = {}
            for t in tasks:
                answer = "" if self.empty else self._target(rec, t, image_text)
                result.update(post_process_generation(answer, t, (rec["width"], rec["height"])))
            results.append(result)
        return results

    @staticmethod
    def _target(rec, task, text):
        prompt = build_prompt(task, text)
        return next((s.target for s in build_samples(rec, task) if s.prompt == prompt), "")


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("split")
    config = WorldConfig(image_size=128, min_objects=2, max_objects=4, text_probability=1.0)
    write_split(folder, 3, seed=5, config=config)
    records = read_split(folder)
    assert all(r["texts"] for r in records)
    return folder, records


ALL_TASKS = tuple(evaluated_tasks())


@needs_coco
def test_evaluate_synthetic_perfect(split, tmp_path: Path):
    folder, records = split
    predictor = AnnotationPredictor(records, folder)
    report = evaluate_synthetic(
        predictor,
        records,
        folder,
        tasks=ALL_TASKS,
        progress=False,
        decoding={"num_beams": 1},
        predictions_path=tmp_path / "predictions.jsonl",
    )
    assert report["images"] == 3
    objects = sum(len(r["objects"]) for r in records)
    assert report["od_objects"] == objects and report["referring_expressions"] == objects
    assert [report["od_mAP"], report["od_mAP50"], report["od_mAP75"]] == pytest.approx([1.0, 1.0, 1.0])
    assert report["referring_mIoU"] > 0.9 and report["referring_P@0.5"] == 1.0  # polygons move by half a bin
    assert report["ocr_exact_match"] == 1.0 and report["ocr_cer"] == 0.0 and report["ocr_wer"] == 0.0
    assert report["ocr_region_f1"] == 1.0
    assert report["grounding_recall@1"] == 1.0 and report["grounding_phrases"] > 0
    for prefix in ("caption", "detailed_caption", "more_detailed_caption"):
        assert report[f"{prefix}_all_named"] == 1.0
        assert report[f"{prefix}_category_recall"] == 1.0
        assert report[f"{prefix}_category_precision"] == 1.0
        if cider_available():
            assert report[f"{prefix}_cider"] > 0.0
    assert all(check_targets(report).values())

    # tasks without input share one call per image group; decoding options reach predict
    plain = [c for c in predictor.calls if c[2] is None]
    assert len(plain) == 1 and plain[0][0] == 3 and len(plain[0][1]) == 6
    assert all(c[3] == {"num_beams": 1} for c in predictor.calls)

    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    by_task = {}
    for line in lines:
        by_task.setdefault(line["task"], []).append(line)
    assert len(by_task["<REFERRING_EXPRESSION_SEGMENTATION>"]) == objects
    assert all(line["iou"] > 0.8 for line in by_task["<REFERRING_EXPRESSION_SEGMENTATION>"])
    assert all(line["exact"] and line["cer"] == 0.0 for line in by_task["<OCR>"])
    assert {line["image"] for line in by_task["<OD>"]} == {r["image"] for r in records}


@needs_coco
def test_evaluate_synthetic_empty_answers(split):
    folder, records = split
    report = evaluate_synthetic(AnnotationPredictor(records, folder, empty=True), records, folder, progress=False)
    assert report["od_mAP"] == report["od_mAP50"] == 0.0
    assert report["referring_mIoU"] == 0.0
    assert report["ocr_exact_match"] == 0.0 and report["ocr_cer"] == 1.0
    assert report["grounding_recall@1"] == 0.0
    assert report["caption_all_named"] == 0.0 and report["caption_category_recall"] == 0.0
    assert report["caption_category_precision"] is None
    assert check_targets(report) == {key: False for key in TARGETS}
    assert "<OCR_WITH_REGION>" not in DEFAULT_TASKS
    assert not any(key.startswith("ocr_region") for key in report)


@needs_coco
def test_evaluate_synthetic_options(split):
    folder, records = split
    predictor = AnnotationPredictor(records, folder)
    report = evaluate_synthetic(predictor, records, folder, tasks=["ocr", "od"], max_images=2, progress=False)
    assert report["images"] == 2 and report["ocr_images"] == 2
    assert set(report) == {"images", "seconds", "ocr_exact_match", "ocr_cer", "ocr_wer", "ocr_images"} | {
        "od_mAP",
        "od_mAP50",
        "od_mAP75",
        "od_images",
        "od_objects",
    }
    with pytest.raises(TaskError, match="no evaluation"):
        evaluate_synthetic(predictor, records, folder, tasks=["<REGION_TO_CATEGORY>"], progress=False)


def test_text_queries_come_from_the_sample_builder(split):
    _, records = split
    from florence2.eval.synthetic import TASK_EVALS

    rec = records[0]
    referring = TASK_EVALS["<REFERRING_EXPRESSION_SEGMENTATION>"].queries(rec)
    assert [text for text, _ in referring] == [o["referring"] for o in rec["objects"]]
    ocr = TASK_EVALS["<OCR>"].queries(rec)
    assert ocr == [(None, build_samples(rec, "<OCR>")[0].target)]
    ((caption, phrases),) = TASK_EVALS["<CAPTION_TO_PHRASE_GROUNDING>"].queries(rec)
    assert caption == rec["captions"]["brief"] and phrases


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _parse(argv):
    parser = argparse.ArgumentParser(prog="florence2")
    eval_cli.add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["eval", *argv])


@needs_coco
def test_cli_eval_on_a_split(split, tmp_path: Path, monkeypatch, capsys):
    folder, records = split
    from florence2.pipeline import Florence2

    monkeypatch.setattr(
        Florence2, "from_pretrained", classmethod(lambda cls, *a, **k: AnnotationPredictor(records, folder))
    )
    out = tmp_path / "report.json"
    args = _parse(["--split", str(folder), "--out", str(out), "--no-progress", "--check-targets"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| od_mAP50 | 1.0000 | >= 0.7 (reached) |" in printed  # 4 decimals hide COCO's 1 - 1e-16
    document = json.loads(out.read_text())
    assert document["command"].startswith(f"florence2 eval --split {folder} --out {out}")
    assert document["figures"]["ocr_exact_match"] == 1.0
    assert document["targets"]["caption_all_named"] == {"target": 0.8, "reached": True}


def test_cli_eval_generates_a_split(monkeypatch, capsys):
    from florence2.pipeline import Florence2

    made = {}

    def fake_from_pretrained(cls, *args, **kwargs):
        return made.setdefault("predictor", _LazyPredictor())

    monkeypatch.setattr(Florence2, "from_pretrained", classmethod(fake_from_pretrained))
    args = _parse(["--num-images", "2", "--seed", "5", "--scene-size", "64", "--task", "caption", "--no-progress"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| images | 2 |" in printed and "caption_all_named" in printed
    assert made["predictor"].calls == 1


class _LazyPredictor:
    """Captions every image with every category name: recall 1, precision low."""

    calls = 0

    def predict(self, images, task, text=None, **kwargs):
        self.calls += 1
        tasks = [task] if isinstance(task, str) else task
        caption = "circle square triangle star hexagon diamond cross heart"
        return [{get_task(t).token: caption for t in tasks} for _ in images]


def test_cli_rejects_unknown_tasks_and_needs_a_split():
    with pytest.raises(SystemExit):
        _parse(["--split", "x", "--task", "REGION_TO_CATEGORY"])
    args = _parse([])  # the benchmark subcommands need no split, so the check runs with the command
    with pytest.raises(SystemExit):
        args.func(args)
    with pytest.raises(SystemExit):
        _parse(["synthetic"])


def test_cli_synthetic_subcommand_and_default_are_the_same_command():
    default = _parse(["--num-images", "200", "--seed", "777", "--scene-size", "128"])
    sub = _parse(["synthetic", "--num-images", "200", "--seed", "777", "--scene-size", "128"])
    assert default.func is sub.func is eval_cli.cmd_synthetic
    for name in ("num_images", "seed", "scene_size", "split", "task", "batch_size"):
        assert getattr(default, name) == getattr(sub, name), name
    assert eval_cli.command_line(default) == "florence2 eval --num-images 200"  # 777 and 128 are the defaults
    assert eval_cli.command_line(sub) == "florence2 eval synthetic --num-images 200"
    tasks = _parse(["--split", "s", "--task", "od", "--task", "ocr", "--progress", "--check-targets"])
    assert eval_cli.command_line(tasks) == "florence2 eval --split s --task '<OD>' --task '<OCR>' --check-targets"


def test_format_report_marks_targets():
    table = eval_cli.format_report({"images": 3, "od_mAP50": 0.5, "referring_mIoU": None, "ocr_cer": math.pi})
    assert "| od_mAP50 | 0.5000 | >= 0.7 (MISSED) |" in table
    assert "| referring_mIoU | n/a | >= 0.6 (not measured) |" in table
    assert "| ocr_cer | 3.1416 |  |" in table


@needs_coco
def test_evaluate_synthetic_with_a_random_weight_model(split):
    """The real predictor's interface: garbage answers from random weights still score in range."""
    from florence2 import Florence2, Florence2Processor, ImageProcessor
    from florence2.tasks import TASKS
    from florence2.tokenizer import train_bpe_tokenizer
    from tests.checkpoints import random_model, tiny_config

    folder, records = split
    tokenizer = train_bpe_tokenizer([s.prompt for s in TASKS.values()] * 20, vocab_size=300)
    model = random_model(tiny_config(vocab_size=tokenizer.vocab_size, max_positions=256), std=0.2)
    predictor = Florence2(model, Florence2Processor(tokenizer, ImageProcessor(size=(64, 64)), max_positions=256))
    report = evaluate_synthetic(
        predictor,
        records[:1],
        folder,
        tasks=["<OD>", "<OCR>", "<CAPTION_TO_PHRASE_GROUNDING>"],  # one multi-task call, one text call
        progress=False,
        decoding={"max_new_tokens": 4, "num_beams": 1},
    )
    assert report["images"] == 1
    for key, value in report.items():
        if key.endswith(("mAP", "mAP50", "exact_match", "recall@1")):
            assert value is None or 0.0 <= value <= 1.0, key
