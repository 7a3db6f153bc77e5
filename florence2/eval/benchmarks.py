"""Standard-benchmark runners: COCO detection, captions, RefCOCO REC/RES, Flickr30k grounding, OCR.

>>> from florence2 import Florence2
>>> from florence2.eval.benchmarks import evaluate_coco_detection
>>> f2 = Florence2.from_pretrained("Florence-2-base")
>>> summary = evaluate_coco_detection(f2, "coco/annotations/instances_val2017.json", "coco/val2017", out_dir="out/coco")
>>> summary["figures"]["AP"]

Each runner reads the benchmark's annotation files as distributed (:mod:`florence2.data.formats`),
asks the predictor one task per sample, scores the answers with the reference scorers
(:mod:`florence2.eval.metrics`: pycocotools, pycocoevalcap) and returns a summary; with ``out_dir``
it writes ``predictions.jsonl`` (one line per sample: its id, image, text input, the task's result,
the sequence score when ``predict`` gives one, and the sample's own figures), ``summary.json`` and
``summary.md``.

Figures are on the paper's scale: percentages, CIDEr x100 (a CIDEr-D of 1.33 is printed 133.0),
CER and WER in percent too.

========================  =================================  ==============================================
runner                    task asked                         figures
========================  =================================  ==============================================
``coco-det``              ``<OD>``                           AP, AP50, AP75, APs/m/l, AR100 (pycocotools)
``captions``              ``<CAPTION>`` (or another caption)  CIDEr, BLEU-1..4, METEOR, ROUGE-L (pycocoevalcap)
``refcoco`` REC           ``<CAPTION_TO_PHRASE_GROUNDING>``  accuracy: first box with IoU >= 0.5
                          (or ``<OPEN_VOCABULARY_DETECTION>``)
``refcoco`` RES           ``<REFERRING_EXPRESSION_SEGMENTATION>``  mIoU, oIoU, P@0.5 of the polygon masks
``flickr30k``             ``<CAPTION_TO_PHRASE_GROUNDING>``  recall@1 per phrase (any-box or merged-box)
``ocr``                   ``<OCR>``                          exact match, CER, WER
========================  =================================  ==============================================

Scores: detections are ranked by the scores ``predict`` attaches to boxes (``scores``); results
without scores rank every box 1.0 (their output order breaks ties), and ``unit_scores=True`` forces
that. When the results carry scores, ``coco-det`` also reports the figures with every score 1.0
(``AP_unit_scores``, ...), the comparison other tools cannot make.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from florence2.convert import decode_rle, extract_regions, rasterize_polygons, to_coco_detections
from florence2.data.formats import (
    BenchmarkSample,
    read_caption_references,
    read_coco_detection,
    read_flickr30k,
    read_ocr_references,
    read_refcoco_expressions,
)
from florence2.eval.metrics import (
    box_iou,
    caption_scores,
    coco_evaluate,
    edit_distance,
    grounding_recall_at_1,
    normalize_text,
    ocr_scores,
    rec_accuracy,
    segmentation_scores,
)
from florence2.eval.runner import Answer, Predictor, Request, answer_requests, chunks
from florence2.progress import progress_bar
from florence2.tasks import get_task

__all__ = [
    "REC_TASKS",
    "evaluate_captions",
    "evaluate_coco_detection",
    "evaluate_flickr30k",
    "evaluate_ocr",
    "evaluate_refcoco",
    "format_summary",
    "predict_samples",
]

# Tasks that can answer a referring expression with boxes; the first is the default.
REC_TASKS = ("<CAPTION_TO_PHRASE_GROUNDING>", "<OPEN_VOCABULARY_DETECTION>")
SCALE = "percent (CIDEr x100)"
# Images per group of predict calls: the progress bar moves once per group.
_IMAGES_PER_STEP = 64


def predict_samples(
    predictor: Predictor,
    samples: Sequence[BenchmarkSample],
    task: str,
    *,
    batch_size: int = 8,
    decoding: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> tuple[list[Answer], float]:
    """Ask ``task`` of every sample (its ``text`` as the task input); returns the answers in sample
    order and the seconds spent in ``predict``.

    Samples without text run ``batch_size`` images per forward pass; samples sharing a text run
    together; a text unique to one image runs alone (``predict`` takes one text per call).
    """
    token = get_task(task).token
    decoding = dict(decoding or {})
    answers: list[Answer | None] = [None] * len(samples)
    bar = progress_bar(len(samples), enabled=progress, unit="sample", desc=token)
    seconds = 0.0
    try:
        for chunk in chunks(range(len(samples)), max(_IMAGES_PER_STEP, batch_size)):
            images = list(dict.fromkeys(samples[i].image for i in chunk))
            index = {image: k for k, image in enumerate(images)}
            requests = [Request(index[samples[i].image], token, samples[i].text) for i in chunk]
            start = time.perf_counter()
            got = answer_requests(predictor, [str(p) for p in images], requests, batch_size, decoding)
            seconds += time.perf_counter() - start
            for i, request in zip(chunk, requests):
                answers[i] = got[request]
            bar.update(len(chunk))
    finally:
        bar.close()
    return answers, seconds  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------


def _percent(value: float | None) -> float | None:
    return None if value is None else float(value) * 100.0


def _format(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_summary(summary: Mapping[str, Any]) -> str:
    """A runner's summary as markdown: figures, counts, settings and the command that made it."""
    rows = [f"# {summary['title']} (`{summary['benchmark']}`)", "", "| figure | value |", "|---|---:|"]
    rows += [f"| {name} | {_format(value)} |" for name, value in summary["figures"].items()]
    rows += ["", "| count | value |", "|---|---:|"]
    rows += [f"| {name} | {_format(value)} |" for name, value in summary["counts"].items()]
    rows += ["", f"Figures in {summary['scale']}; {summary['seconds']:.1f} s in predict."]
    rows += [f"- {name}: {_format(value)}" for name, value in summary["settings"].items()]
    rows += [f"- note: {note}" for note in summary.get("notes", [])]
    rows += ["", f"Command: `{summary['command'] or '(Python API)'}`", ""]
    return "\n".join(rows)


def _summary(
    benchmark: str,
    title: str,
    figures: dict[str, Any],
    counts: dict[str, Any],
    settings: dict[str, Any],
    seconds: float,
    command: str | None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    return {
        "benchmark": benchmark,
        "title": title,
        "scale": SCALE,
        "figures": figures,
        "counts": counts,
        "settings": settings,
        "notes": list(notes),
        "seconds": round(seconds, 3),
        "command": command,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write(out_dir: str | os.PathLike | None, summary: dict[str, Any], lines: Sequence[Mapping[str, Any]]) -> None:
    if out_dir is None:
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False, default=_jsonable) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(format_summary(summary), encoding="utf-8")


def _line(sample: BenchmarkSample, task: str, answer: Answer, **figures: Any) -> dict[str, Any]:
    line = {"id": sample.id, "image": str(sample.image), "task": task}
    if sample.text is not None:
        line["text"] = sample.text
    line["prediction"] = answer.result
    if answer.sequence_score is not None:
        line["sequence_score"] = answer.sequence_score
    return {**line, **figures}


def _first(samples: list[BenchmarkSample], max_samples: int | None) -> list[BenchmarkSample]:
    return samples if max_samples is None else samples[: max(0, max_samples)]


def _settings(model: str | None, task: str, batch_size: int, decoding: Mapping[str, Any] | None, **more: Any) -> dict:
    return {
        "model": model or "embedded",
        "task": task,
        **more,
        "batch_size": batch_size,
        "decoding": dict(decoding or {}),
    }


# --------------------------------------------------------------------------------------------------
# COCO detection
# --------------------------------------------------------------------------------------------------


def evaluate_coco_detection(
    predictor: Predictor,
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    unit_scores: bool = False,
    max_images: int | None = None,
    batch_size: int = 8,
    decoding: Mapping[str, Any] | None = None,
    progress: bool = False,
    model: str | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """COCO box mAP of ``<OD>`` on a COCO detection file (``instances_val2017.json`` + ``val2017/``).

    Labels meet category names case-insensitively (whitespace collapsed); a label that is no
    category of the file is dropped and counted (``unmatched_labels``). pycocotools evaluates the
    images asked (the first ``max_images`` of the file) with the file's own ground truth (crowd
    regions and areas as given).

    Args:
        unit_scores: rank every box 1.0 whatever ``predict`` returns.
        max_images: evaluate the first this many images of the file.
        decoding: keyword arguments for ``predict`` (``num_beams``, ``max_new_tokens``; also
            ``score_threshold`` / ``nms_iou`` where ``predict`` takes them).
        model, command: recorded in the summary.
    """
    task = "<OD>"
    data = read_coco_detection(annotations, images)
    samples = _first(data.samples, max_images)
    answers, seconds = predict_samples(
        predictor, samples, task, batch_size=batch_size, decoding=decoding, progress=progress
    )
    results = [a.result for a in answers]
    image_ids = [s.image_id for s in samples]
    converted = to_coco_detections(results, image_ids, data.categories, unit_scores=unit_scores)
    has_scores = any(extract_regions(r).has_scores for r in results)
    stats = coco_evaluate(data.dataset, converted.detections, image_ids=image_ids)
    figures = {name: _percent(stats[name]) for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")}
    if has_scores and not unit_scores:
        constant = to_coco_detections(results, image_ids, data.categories, unit_scores=True)
        unit = coco_evaluate(data.dataset, constant.detections, image_ids=image_ids)
        figures.update({f"{name}_unit_scores": _percent(unit[name]) for name in ("AP", "AP50", "AP75")})
    evaluated = set(image_ids)
    objects = sum(1 for a in data.dataset["annotations"] if a["image_id"] in evaluated and not a["iscrowd"])
    counts = {
        "images": len(samples),
        "objects": objects,
        "detections": len(converted.detections),
        "unmatched_labels": sum(converted.unmatched.values()),
    }
    scores = "1.0 (forced)" if unit_scores else ("model" if has_scores else "1.0 (the results carry none)")
    settings = _settings(model, task, batch_size, decoding, annotations=data.path, images=images, scores=scores)
    notes = []
    if converted.unmatched:
        common = ", ".join(f"{label!r} x{n}" for label, n in converted.unmatched.most_common(5))
        notes.append(f"labels that are no category were dropped: {common}")
    summary = _summary("coco-det", "COCO detection", figures, counts, settings, seconds, command, notes)
    by_image: dict[Any, int] = {}
    for d in converted.detections:
        by_image[d["image_id"]] = by_image.get(d["image_id"], 0) + 1
    lines = [_line(s, task, a, detections=by_image.get(s.image_id, 0)) for s, a in zip(samples, answers)]
    _write(out_dir, summary, lines)
    return summary


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------


def evaluate_captions(
    predictor: Predictor,
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    task: str = "<CAPTION>",
    split: str | None = None,
    java: bool | None = None,
    max_images: int | None = None,
    batch_size: int = 8,
    decoding: Mapping[str, Any] | None = None,
    progress: bool = False,
    model: str | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """coco-caption scores of a caption task on COCO / NoCaps / TextCaps / Karpathy references.

    Args:
        task: ``<CAPTION>`` (the paper's COCO, NoCaps and TextCaps figures), ``<DETAILED_CAPTION>`` or
            ``<MORE_DETAILED_CAPTION>``.
        split: the Karpathy split to read (``"test"``); other formats hold one split per file.
        java: the PTB tokenizer and METEOR (Java) when True, our tokenizer and no METEOR when False,
            None: Java when a ``java`` works.
    """
    token = get_task(task).token
    data = read_caption_references(annotations, images, split=split)
    samples = _first(data.samples, max_images)
    answers, seconds = predict_samples(
        predictor, samples, token, batch_size=batch_size, decoding=decoding, progress=progress
    )
    candidates = [str(a.result) for a in answers]
    scores = caption_scores(candidates, [s.truth for s in samples], java=java)
    names = ("CIDEr", "BLEU-4", "METEOR", "ROUGE-L", "BLEU-1", "BLEU-2", "BLEU-3")
    figures = {name: _percent(scores[name]) for name in names}
    counts = {"images": len(samples), "references": sum(len(s.truth) for s in samples)}
    settings = _settings(
        model,
        token,
        batch_size,
        decoding,
        annotations=data.path,
        format=data.format,
        split=split,
        images=images,
        tokenizer=scores["tokenizer"],
    )
    notes = []
    if scores["tokenizer"] != "ptb":
        notes.append("no Java: captions tokenized by florence2 (not the PTB tokenizer) and METEOR left out")
    if scores.get("meteor_error"):
        notes.append(f"METEOR failed: {scores['meteor_error']}")
    summary = _summary("captions", "Captions", figures, counts, settings, seconds, command, notes)
    lines = [_line(s, token, a, references=s.truth) for s, a in zip(samples, answers)]
    _write(out_dir, summary, lines)
    return summary


# --------------------------------------------------------------------------------------------------
# RefCOCO / RefCOCO+ / RefCOCOg
# --------------------------------------------------------------------------------------------------


def _first_box(result: Any) -> list[float] | None:
    regions = extract_regions(result)
    return regions.boxes[0].tolist() if len(regions) else None


def _truth_mask(truth: Mapping[str, Any], size: tuple[int, int]) -> np.ndarray:
    """The referred object's mask: COCO polygons rasterised like predictions, or its RLE decoded;
    its box when the annotation has no segmentation."""
    segmentation = truth.get("segmentation")
    if isinstance(segmentation, Mapping):
        mask = decode_rle(segmentation)
        if mask.shape != (size[1], size[0]):
            raise ValueError(f"annotation {truth.get('ann_id')}: RLE of size {mask.shape} on a {size} image")
        return mask
    if segmentation:
        return rasterize_polygons(segmentation, size)
    x0, y0, x1, y1 = truth["bbox"]
    return rasterize_polygons([x0, y0, x1, y0, x1, y1, x0, y1], size)


def evaluate_refcoco(
    predictor: Predictor,
    refs: str | os.PathLike,
    instances: str | os.PathLike,
    images: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    split: str = "val",
    tasks: Sequence[str] = ("rec", "res"),
    rec_task: str = REC_TASKS[0],
    sentence_key: str = "sent",
    max_samples: int | None = None,
    batch_size: int = 8,
    decoding: Mapping[str, Any] | None = None,
    progress: bool = False,
    model: str | None = None,
    dataset: str | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Referring expression comprehension (REC) and segmentation (RES) on RefCOCO, RefCOCO+ or RefCOCOg.

    REC: ``rec_task`` with the expression as input; the first box of the answer (output order) is
    the prediction; accuracy = fraction with IoU >= 0.5 against the referred object's box. The paper
    lists REC among its tasks without publishing a prompt for it, and the released checkpoints
    have no REC task token; ``<CAPTION_TO_PHRASE_GROUNDING>`` (the default) and
    ``<OPEN_VOCABULARY_DETECTION>`` both answer an expression with boxes.

    RES: ``<REFERRING_EXPRESSION_SEGMENTATION>``; the union of the answer's polygons against the
    object's mask (its COCO polygons through the same rasteriser, or its RLE) -> mIoU (mean of
    per-expression IoU; the paper's RES figure), oIoU (total intersection / total union) and P@0.5.

    Args:
        tasks: ``"rec"``, ``"res"`` or both.
        sentence_key: the expression text, ``"sent"`` (the distributed lower-cased form) or ``"raw"``.
        dataset: the name recorded in the summary (default: the refs file's folder name).
        max_samples: evaluate the first this many expressions of the split.
    """
    unknown = [t for t in tasks if t not in ("rec", "res")]
    if unknown or not tasks:
        raise ValueError(f"tasks must be 'rec' and/or 'res', got {list(tasks)}")
    rec_token = get_task(rec_task).token
    if rec_token not in REC_TASKS:
        raise ValueError(f"REC needs a task answering boxes: {', '.join(REC_TASKS)}; got {rec_token}")
    samples = read_refcoco_expressions(refs, instances, images, split=split, sentence_key=sentence_key)
    samples = _first(samples, max_samples)
    figures: dict[str, Any] = {}
    lines: list[dict[str, Any]] = []
    seconds = 0.0
    if "rec" in tasks:
        answers, spent = predict_samples(
            predictor, samples, rec_token, batch_size=batch_size, decoding=decoding, progress=progress
        )
        seconds += spent
        boxes = [_first_box(a.result) for a in answers]
        figures["REC_accuracy"] = _percent(rec_accuracy(zip(boxes, (s.truth["bbox"] for s in samples)))["accuracy"])
        for s, a, box in zip(samples, answers, boxes):
            iou = float(box_iou(box, s.truth["bbox"])[0, 0]) if box is not None else 0.0
            lines.append(_line(s, rec_token, a, box=box, truth_box=s.truth["bbox"], iou=iou, correct=iou >= 0.5))
    if "res" in tasks:
        res_token = "<REFERRING_EXPRESSION_SEGMENTATION>"
        answers, spent = predict_samples(
            predictor, samples, res_token, batch_size=batch_size, decoding=decoding, progress=progress
        )
        seconds += spent
        ious, pairs = [], []
        for s, a in zip(samples, answers):
            size = s.size
            predicted = rasterize_polygons(a.result.get("polygons", []), size)
            truth = _truth_mask(s.truth, size)
            pairs.append((predicted, truth))
            ious.append(segmentation_scores([(predicted, truth)])["mIoU"])
            lines.append(_line(s, res_token, a, iou=ious[-1]))
        res = segmentation_scores(pairs)
        figures.update({f"RES_{name}": _percent(res[name]) for name in ("mIoU", "oIoU", "P@0.5")})
    name = dataset or Path(refs).parent.name or "refcoco"
    counts = {"expressions": len(samples), "refs": len({s.id.split(":")[0] for s in samples})}
    counts["images"] = len({s.image_id for s in samples})
    settings = _settings(
        model,
        ", ".join([rec_token] * ("rec" in tasks) + ["<REFERRING_EXPRESSION_SEGMENTATION>"] * ("res" in tasks)),
        batch_size,
        decoding,
        dataset=name,
        split=split,
        sentence=sentence_key,
        refs=refs,
        instances=instances,
        images=images,
    )
    title = f"Referring expressions ({name} {split})"
    summary = _summary("refcoco", title, figures, counts, settings, seconds, command)
    _write(out_dir, summary, lines)
    return summary


# --------------------------------------------------------------------------------------------------
# Flickr30k Entities
# --------------------------------------------------------------------------------------------------


def _merged(boxes: Sequence[Sequence[float]]) -> list[float]:
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return [*array[:, :2].min(0).tolist(), *array[:, 2:].max(0).tolist()]


def evaluate_flickr30k(
    predictor: Predictor,
    root: str | os.PathLike,
    images: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    split: str = "test",
    protocol: str = "any",
    max_samples: int | None = None,
    batch_size: int = 8,
    decoding: Mapping[str, Any] | None = None,
    progress: bool = False,
    model: str | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Phrase grounding recall@1 on Flickr30k Entities (:func:`~florence2.data.formats.read_flickr30k`).

    ``<CAPTION_TO_PHRASE_GROUNDING>`` gets each sentence without its markup; a ground-truth phrase is
    a hit when the first predicted box labelled with that phrase (lower case, whitespace collapsed,
    non-ASCII dropped: :func:`~florence2.eval.metrics.grounding_recall_at_1`) has IoU >= 0.5 with
    its ground truth. A phrase the model rewords or leaves out is a miss.

    Args:
        protocol: ``"any"``: IoU with any of the phrase's boxes (MDETR's any-box protocol);
            ``"merged"``: with the union box of all of them (the dataset's merged-box protocol).
        max_samples: evaluate the first this many sentences of the split.
    """
    if protocol not in ("any", "merged"):
        raise ValueError(f"protocol must be 'any' or 'merged', got {protocol!r}")
    task = "<CAPTION_TO_PHRASE_GROUNDING>"
    samples = _first(read_flickr30k(root, images, split=split), max_samples)
    answers, seconds = predict_samples(
        predictor, samples, task, batch_size=batch_size, decoding=decoding, progress=progress
    )

    def truth(sample: BenchmarkSample) -> list[tuple[str, list]]:
        if protocol == "any":
            return sample.truth
        return [(phrase, [_merged(boxes)]) for phrase, boxes in sample.truth]

    pairs = [(a.result, truth(s)) for s, a in zip(samples, answers)]
    scores = grounding_recall_at_1(pairs)
    figures = {"recall@1": _percent(scores["recall@1"])}
    counts = {"sentences": len(samples), "phrases": scores["phrases"], "images": len({s.image_id for s in samples})}
    settings = _settings(model, task, batch_size, decoding, root=root, split=split, images=images, protocol=protocol)
    title = f"Flickr30k Entities phrase grounding ({split})"
    summary = _summary("flickr30k", title, figures, counts, settings, seconds, command)
    lines = []
    for s, a, pair in zip(samples, answers, pairs):
        one = grounding_recall_at_1([pair])
        lines.append(_line(s, task, a, phrases=one["phrases"], hits=round((one["recall@1"] or 0.0) * one["phrases"])))
    _write(out_dir, summary, lines)
    return summary


# --------------------------------------------------------------------------------------------------
# OCR
# --------------------------------------------------------------------------------------------------


def evaluate_ocr(
    predictor: Predictor,
    annotations: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    max_images: int | None = None,
    batch_size: int = 8,
    decoding: Mapping[str, Any] | None = None,
    progress: bool = False,
    model: str | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """``<OCR>`` exact match, CER and WER (:func:`~florence2.eval.metrics.ocr_scores`; whitespace runs,
    line breaks included, count as one space; case and punctuation count) on the layouts of
    :func:`~florence2.data.formats.read_ocr_references`. CER and WER are corpus-level: edits summed over the
    images divided by the reference characters (words) summed."""
    task = "<OCR>"
    samples = _first(read_ocr_references(annotations, images), max_images)
    answers, seconds = predict_samples(
        predictor, samples, task, batch_size=batch_size, decoding=decoding, progress=progress
    )
    scores = ocr_scores((str(a.result), s.truth) for s, a in zip(samples, answers))
    figures = {
        name: _percent(scores[key]) for name, key in (("exact_match", "exact_match"), ("CER", "cer"), ("WER", "wer"))
    }
    counts = {"images": len(samples), "characters": sum(len(normalize_text(s.truth)) for s in samples)}
    settings = _settings(model, task, batch_size, decoding, annotations=annotations, images=images)
    summary = _summary("ocr", "OCR", figures, counts, settings, seconds, command)
    lines = []
    for s, a in zip(samples, answers):
        predicted, reference = normalize_text(str(a.result)), normalize_text(s.truth)
        cer = edit_distance(predicted, reference) / max(1, len(reference))
        lines.append(_line(s, task, a, truth=s.truth, exact=predicted == reference, cer=cer))
    _write(out_dir, summary, lines)
    return summary
