"""Iterative refinement, the third phase of the FLD-5B data engine: the model labels unlabeled
images, the engine makes the labels better than one pass of the model, the model learns from them,
and the loop repeats.

>>> from florence2.refine import RefineConfig, refine
>>> report = refine(RefineConfig(out="runs/refine", images=("scenes/",), rounds=3))

Each round ``k`` (1, 2, ...):

1. **label** the images with the current model into ``OUT/dataset`` as run ``k`` of the dataset
   store (:func:`florence2.label.label`; so a round can be inspected, searched, exported, and a
   crashed round resumes): the plan's tasks (default ``<OD>``) on the image and on its extra views
   (``tta``, default its mirror image), the views' boxes fused (:mod:`florence2.label.tta`);
2. **keep** the labels whose fused score reaches the round's threshold: ``threshold="auto"`` takes
   the score that splits the round's fused scores in two (those every view agreed on, and the rest:
   :func:`~florence2.label.tta.split_threshold`), or a fixed number; with ``keep="images"``, an
   image's boxes are kept only when every one of them reaches it (the views agree on the whole
   image), else none of them (its other tasks' labels stay); exported as JSON lines;
3. **fine-tune** the current model on the kept labels (and on ``labeled``, human-labeled dataset
   specs, when given) with :func:`florence2.train.finetune.finetune`: the next round's model;
4. **measure**, when the images have ground truth (a synthetic split's ``annotations.jsonl``, which
   the loop itself never reads): the precision and recall at IoU 0.5 of one plain pass of the
   model and of the kept labels; and, with ``eval_images``, the model's held-out figures
   (:func:`florence2.eval.synthetic.evaluate_synthetic` on a split of world seed ``eval_seed``).

``OUT/report.json`` and ``OUT/report.png`` hold every round's figures (round 0: the starting
model). Rerunning the same command continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from florence2.data.synthetic import WorldConfig, write_split
from florence2.errors import Florence2Error
from florence2.eval.synthetic import DEFAULT_TASKS, evaluate_synthetic
from florence2.label import DatasetStore, Filters, label
from florence2.label.export import export_dataset
from florence2.label.tta import FUSED_TASKS, split_threshold
from florence2.pipeline import Florence2
from florence2.scoring import box_iou
from florence2.tasks import get_task
from florence2.train.finetune import FinetuneConfig, finetune
from florence2.train.plot import plot_metrics

REPORT = "report.json"
KEEP_MODES = ("regions", "images")


@dataclass(frozen=True)
class RefineConfig:
    """Settings of a refinement run (``florence2 engine refine`` options)."""

    out: str
    images: tuple[str, ...]
    rounds: int = 3
    model: str | None = None  # the starting checkpoint; None: the embedded model
    tasks: tuple[str, ...] = ("<OD>",)
    tta: tuple[str, ...] = ("flip",)
    threshold: float | str = "auto"
    keep: str = "regions"  # "regions": each box that reaches the threshold; "images": all of an image's or none
    labeled: tuple[str, ...] = ()  # data specs of human-labeled sets, mixed into every round
    steps: int = 600
    batch_size: int = 16
    lr: float = 5e-5
    crop: float = 0.0
    freeze: tuple[str, ...] = ()
    distill: float = 0.0
    label_batch_size: int = 8
    eval_images: int = 0  # held-out synthetic scenes to measure the model on (0: none)
    eval_tasks: tuple[str, ...] = DEFAULT_TASKS  # the held-out figures measured
    eval_seed: int = 777
    eval_scene_size: int = 128
    quality_images: int = 300  # images whose labels are checked against ground truth, when it exists
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.threshold != "auto" and not (isinstance(self.threshold, (int, float)) and 0 <= self.threshold <= 1):
            raise ValueError(f"threshold must be 'auto' or a number in [0, 1], got {self.threshold!r}")
        if not self.images:
            raise ValueError("no images to refine on")
        if self.keep not in KEEP_MODES:
            raise ValueError(f"keep must be one of {KEEP_MODES}, got {self.keep!r}")


@dataclass
class Round:
    """One round's figures."""

    round: int
    model: str
    threshold: float | None = None
    labeled_images: int = 0
    kept_regions: int = 0
    dropped_regions: int = 0
    dropped_images: int = 0  # images whose boxes were all dropped for one below the threshold (keep="images")
    plain: dict[str, float] = field(default_factory=dict)  # one plain pass vs ground truth
    kept: dict[str, float] = field(default_factory=dict)  # the kept labels vs ground truth
    eval: dict[str, Any] = field(default_factory=dict)  # the model's held-out figures
    seconds: dict[str, float] = field(default_factory=dict)


def refine(config: RefineConfig) -> list[dict[str, Any]]:
    """Run the loop (see the module docstring); returns the report's rounds."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / REPORT
    rounds = _read_report(report_path, config)
    truth = _ground_truth(config.images)
    held_out = _held_out(out, config) if config.eval_images else None
    model = config.model
    if not rounds:
        start = Round(0, model or "embedded")
        start.eval = _evaluate(model, held_out, config) if held_out else {}
        rounds.append(asdict(start))
        _write_report(report_path, config, rounds)
    else:
        model = rounds[-1]["model"] if rounds[-1]["round"] else model
    for k in range(len(rounds), config.rounds + 1):
        rounds.append(asdict(_round(k, model, config, out, truth, held_out)))
        model = rounds[-1]["model"]
        _write_report(report_path, config, rounds)
    return rounds


def upper_bound(config: RefineConfig) -> dict[str, Any]:
    """The same fine-tune as one round, on the ground-truth labels of the images (synthetic split
    folders) instead of the model's: how far labels alone could take the model. Written to
    ``OUT/upper-bound.json``."""
    out = Path(config.out) / "upper-bound"
    path = out.with_suffix(".json")
    if path.is_file():
        return json.loads(path.read_text())
    splits = [source for source in config.images if (Path(source) / "annotations.jsonl").is_file()]
    if not splits:
        raise Florence2Error("an upper bound needs images with ground truth (synthetic split folders)")
    started = time.perf_counter()
    finetune(
        FinetuneConfig(
            out_dir=str(out),
            data=tuple(f"synthetic:{split}" for split in splits) + config.labeled,
            model=config.model,
            tasks=config.tasks,
            steps=config.steps * config.rounds,
            batch_size=config.batch_size,
            lr=config.lr,
            crop=config.crop,
            freeze=config.freeze,
            distill=config.distill,
            seed=config.seed,
            progress=config.progress,
            resume=(out / "checkpoint-last").is_dir(),
        )
    )
    figures = {"model": str(out / "checkpoint-last"), "steps": config.steps * config.rounds}
    figures["seconds"] = round(time.perf_counter() - started, 1)
    if config.eval_images:
        figures["eval"] = _evaluate(figures["model"], _held_out(Path(config.out), config), config)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def _round(k: int, model: str | None, config: RefineConfig, out: Path, truth: dict, held_out: Path | None) -> Round:
    folder = out / f"round-{k}"
    figures = Round(k, str(folder / "train" / "checkpoint-last"))
    started = time.perf_counter()
    summary = label(
        list(config.images),
        out / "dataset",
        model=model,
        tasks=config.tasks,
        tta=config.tta,
        batch_size=config.label_batch_size,
        new_run=True,  # every round's model is another: its own run (an interrupted round resumes)
        progress=config.progress,
    )
    figures.labeled_images = summary.labeled + summary.skipped
    figures.seconds["label"] = round(time.perf_counter() - started, 1)
    with DatasetStore(out / "dataset") as store:
        records = list(store.records(summary.run))
    threshold = _threshold(records, config)
    figures.threshold = threshold
    doubtful = _doubtful(records, config, threshold)
    if truth:
        figures.kept = _quality([r for r in records if r["id"] not in doubtful], truth, config, threshold)
        started = time.perf_counter()
        figures.plain = _plain_quality(model, records, truth, config)
        figures.seconds["quality"] = round(time.perf_counter() - started, 1)
    labels = folder / "labels"
    if not (labels / "labels.jsonl").is_file():
        # written beside, then renamed: a round killed part way writes its labels again when rerun
        partial = folder / "labels.partial"
        shutil.rmtree(partial, ignore_errors=True)
        exported = export_dataset(
            out / "dataset", partial, "jsonl", run=summary.run, filters=Filters(min_score=threshold), images="none"
        )
        figures.dropped_regions = sum(n for reasons in exported["dropped"].values() for n in reasons.values())
        figures.kept_regions = sum(split["regions"] for split in exported["splits"].values())
        if doubtful:
            dropped = _drop_boxes(partial / "labels.jsonl", doubtful, config)
            figures.dropped_images = len(doubtful)
            figures.kept_regions -= dropped
            figures.dropped_regions += dropped
        shutil.rmtree(labels, ignore_errors=True)
        partial.rename(labels)
    started = time.perf_counter()
    train = folder / "train"
    finetune(
        FinetuneConfig(
            out_dir=str(train),
            data=(f"labels:{labels / 'labels.jsonl'}", *config.labeled),
            model=model,
            tasks=config.tasks,
            steps=config.steps,
            batch_size=config.batch_size,
            lr=config.lr,
            crop=config.crop,
            freeze=config.freeze,
            distill=config.distill,
            seed=config.seed + k,
            progress=config.progress,
            resume=(train / "checkpoint-last").is_dir(),
        )
    )
    figures.seconds["train"] = round(time.perf_counter() - started, 1)
    if held_out is not None:
        started = time.perf_counter()
        figures.eval = _evaluate(figures.model, held_out, config)
        figures.seconds["eval"] = round(time.perf_counter() - started, 1)
    return figures


def _threshold(records: Sequence[dict], config: RefineConfig) -> float:
    if config.threshold != "auto":
        return float(config.threshold)
    scores = [s for r in records for task in config.tasks for s in _scores(r["results"].get(task), task)]
    return split_threshold(scores) or 0.0


def _doubtful(records: Sequence[dict], config: RefineConfig, threshold: float) -> set[str]:
    """With ``keep="images"``: the ids of the images whose box tasks gave no box, or a box scoring
    below ``threshold`` (the views did not agree on all of it); else none."""
    if config.keep != "images":
        return set()
    doubtful = set()
    for record in records:
        scores = [_scores(record["results"].get(task), task) for task in config.tasks if task in FUSED_TASKS]
        if any(not found or min(found) < threshold for found in scores):
            doubtful.add(record["id"])
    return doubtful


def _drop_boxes(path: Path, doubtful: set[str], config: RefineConfig) -> int:
    """Remove the box tasks' results of the ``doubtful`` images from an exported JSON-lines file
    (their other results stay); returns the number of boxes removed."""
    lines, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        if item["id"] in doubtful:
            for task in [t for t in config.tasks if t in FUSED_TASKS and t in item["results"]]:
                dropped += len(item["results"].pop(task).get(FUSED_TASKS[task][0], []))
            if not item["results"]:
                continue
        lines.append(json.dumps(item))
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return dropped


def _scores(result: Any, task: str) -> list[float]:
    if not isinstance(result, dict) or task not in FUSED_TASKS:
        return []
    return [s for s in result.get(FUSED_TASKS[task][2], []) if s is not None]


# --- ground truth (only to measure: the loop never reads it) -------------------------------------------


def _ground_truth(images: Iterable[str]) -> dict[str, list[dict]]:
    """Objects by image path for sources that are synthetic split folders (their annotations.jsonl)."""
    truth = {}
    for source in images:
        annotations = Path(source) / "annotations.jsonl"
        if annotations.is_file():
            for line in annotations.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                truth[_key(Path(source) / record["image"])] = record["objects"]
    return truth


def _key(path: str | os.PathLike) -> str:
    return str(Path(path).resolve())


def match(boxes: Sequence[tuple[Sequence[float], str]], objects: Sequence[dict], iou: float = 0.5) -> int:
    """How many of ``boxes`` (best first) find an object of their category at ``iou`` or more, each
    object found at most once."""
    used: set[int] = set()
    found = 0
    for box, label_ in boxes:
        candidates = [j for j, o in enumerate(objects) if j not in used and o["category"] == label_]
        if not candidates:
            continue
        overlaps = box_iou([box], [objects[j]["bbox"] for j in candidates])[0]
        best = int(overlaps.argmax())
        if overlaps[best] >= iou:
            used.add(candidates[best])
            found += 1
    return found


def precision_recall(predicted: dict[str, list], truth: dict[str, list[dict]]) -> dict[str, float]:
    """Precision, recall and F1 at IoU 0.5 of ``{image: [(box, label)]}`` against the truth."""
    hits = boxes = objects = 0
    for image, found in predicted.items():
        hits += match(found, truth[image])
        boxes += len(found)
        objects += len(truth[image])
    precision = hits / boxes if boxes else 0.0
    recall = hits / objects if objects else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4), "boxes": boxes}


def _boxes(result: Any, task: str, threshold: float = 0.0) -> list[tuple[list[float], str]]:
    if not isinstance(result, dict) or task not in FUSED_TASKS:
        return []
    box_key, label_key, score_key = FUSED_TASKS[task]
    ranked = sorted(zip(result[box_key], result[label_key], result[score_key]), key=lambda b: -(b[2] or 0))
    return [(box, label_) for box, label_, score in ranked if (score or 0) >= threshold]


def _quality(records: Sequence[dict], truth: dict, config: RefineConfig, threshold: float) -> dict[str, float]:
    task = config.tasks[0]
    checked = _checked(records, truth, config)
    return precision_recall(
        {_key(r["source"]["path"]): _boxes(r["results"].get(task), task, threshold) for r in checked}, truth
    )


def _checked(records: Sequence[dict], truth: dict, config: RefineConfig) -> list[dict]:
    return [r for r in records if "path" in r["source"] and _key(r["source"]["path"]) in truth][: config.quality_images]


def _plain_quality(model: str | None, records: Sequence[dict], truth: dict, config: RefineConfig) -> dict[str, float]:
    """One plain pass of the model (no extra views, no threshold) on the checked images."""
    task = config.tasks[0]
    paths = [_key(r["source"]["path"]) for r in _checked(records, truth, config)]
    predictor = Florence2.from_pretrained(model)
    answers = predictor.predict(paths, task, batch_size=config.label_batch_size)
    return precision_recall({path: _boxes(a.get(task), task) for path, a in zip(paths, answers)}, truth)


# --- held-out figures and the report -------------------------------------------------------------------


def _held_out(out: Path, config: RefineConfig) -> Path:
    folder = out / "held-out"
    if not (folder / "annotations.jsonl").is_file():
        write_split(
            folder, config.eval_images, seed=config.eval_seed, config=WorldConfig(image_size=config.eval_scene_size)
        )
    return folder


def _evaluate(model: str | None, folder: Path, config: RefineConfig) -> dict[str, Any]:
    records = [json.loads(line) for line in (folder / "annotations.jsonl").read_text().splitlines()]
    predictor = Florence2.from_pretrained(model)
    figures = evaluate_synthetic(predictor, records, folder, tasks=config.eval_tasks, progress=False)
    return {k: v for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _read_report(path: Path, config: RefineConfig) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    if data.get("config") != _config_dict(config):
        raise Florence2Error(f"{path} belongs to a run with other settings; use another --out")
    return data["rounds"]


def _config_dict(config: RefineConfig) -> dict[str, Any]:
    """The settings a report is tied to, as JSON gives them back (all but the rounds to run)."""
    return json.loads(json.dumps({k: v for k, v in asdict(config).items() if k not in ("rounds", "progress")}))


def _write_report(path: Path, config: RefineConfig, rounds: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"config": _config_dict(config), "rounds": rounds}, indent=2) + "\n")
    os.replace(tmp, path)
    curves = []
    for r in rounds:
        point = {"step": r["round"]}
        point.update({f"labels/{k}": v for k, v in r["kept"].items() if k != "boxes"})
        point.update({f"plain/{k}": v for k, v in r["plain"].items() if k != "boxes"})
        point.update({k: v for k, v in r["eval"].items() if k in _PLOTTED})
        curves.append(point)
    plot_metrics(curves, path.with_suffix(".png"))


_PLOTTED = ("od_mAP50", "od_mAP", "referring_mIoU", "ocr_exact_match", "grounding_recall@1", "caption_all_named")


# --- command line ----------------------------------------------------------------------------------------


def add_engine_parser(sub: Any) -> None:
    p = sub.add_parser("engine", help="the data engine's loops")
    commands = p.add_subparsers(dest="engine_command", required=True)
    r = commands.add_parser(
        "refine",
        help="label, filter, fine-tune, repeat",
        description="Iterative refinement: each round the model labels the images, the engine keeps the labels "
        "its views agree on, and the model is fine-tuned on them. Rerun the same command to continue.",
    )
    r.add_argument("--images", nargs="+", required=True, help="sources to label (folders, globs, lists, shards)")
    r.add_argument("--out", required=True, help="the run folder (dataset, rounds, report.json, report.png)")
    r.add_argument("--model", help="the starting checkpoint (default: the embedded model)")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--task", action="append", help="task labeled and trained (default <OD>; repeatable)")
    r.add_argument("--tta", action="append", help="extra view fused with each image (default flip; 'none' for none)")
    r.add_argument("--threshold", default="auto", help="'auto' (the split of the fused scores) or a score")
    r.add_argument(
        "--keep",
        choices=KEEP_MODES,
        default="regions",
        help="regions: every box reaching the threshold; images: an image's boxes only when all of them reach it",
    )
    r.add_argument("--labeled", action="append", default=[], help="a human-labeled data spec mixed into every round")
    r.add_argument("--steps", type=int, default=600, help="fine-tuning steps per round")
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--lr", type=float, default=5e-5)
    r.add_argument("--crop", type=float, default=0.0, help="train on random crops (see florence2 finetune --crop)")
    r.add_argument("--freeze", default="", help="groups to freeze, e.g. vision,encoder")
    r.add_argument("--distill", type=float, default=0.0, help="KL to the round's starting model (finetune --distill)")
    r.add_argument("--eval-images", type=int, default=0, help="held-out synthetic scenes measured every round")
    r.add_argument("--eval-seed", type=int, default=777)
    r.add_argument("--eval-scene-size", type=int, default=128)
    r.add_argument("--upper-bound", action="store_true", help="also fine-tune on the images' ground truth, once")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    r.set_defaults(func=cmd_refine)


def cmd_refine(args: argparse.Namespace) -> int:
    tta = (
        () if args.tta and "none" in args.tta else tuple(v for value in args.tta or ["flip"] for v in value.split(","))
    )
    threshold = args.threshold if args.threshold == "auto" else float(args.threshold)
    config = RefineConfig(
        out=args.out,
        images=tuple(args.images),
        rounds=args.rounds,
        model=args.model,
        tasks=tuple(get_task(t).token for t in args.task or ["<OD>"]),
        tta=tta,
        threshold=threshold,
        keep=args.keep,
        labeled=tuple(args.labeled),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        crop=args.crop,
        freeze=tuple(g for g in args.freeze.split(",") if g),
        distill=args.distill,
        eval_images=args.eval_images,
        eval_seed=args.eval_seed,
        eval_scene_size=args.eval_scene_size,
        seed=args.seed,
        progress=bool(args.progress),
    )
    rounds = refine(config)
    for r in rounds:
        print(
            f"round {r['round']}: labels P/R {r['kept'].get('precision', '-')}/{r['kept'].get('recall', '-')} "
            f"(plain pass {r['plain'].get('precision', '-')}/{r['plain'].get('recall', '-')}), "
            f"held-out od_mAP50 {r['eval'].get('od_mAP50', '-')}",
            file=sys.stderr,
        )
    if args.upper_bound:
        bound = upper_bound(config)
        print(
            f"upper bound (ground-truth labels): od_mAP50 {bound.get('eval', {}).get('od_mAP50', '-')}", file=sys.stderr
        )
    print(json.dumps({"report": str(Path(args.out) / REPORT)}))
    return 0
