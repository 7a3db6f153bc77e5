"""The labeling engine: sources -> background decoding -> batched inference -> filters -> the store.

(:func:`florence2.label.label` builds a :class:`LabelJob` and runs it here, or on Ray.)

Each image is read and decoded once, on a background thread (``workers``), while the model runs on
the batch before; its content id (SHA-256 of its bytes) decides whether it was labeled already, under
this name or another. A batch goes through the vision tower once, then every task of the run decodes
from that one encoding (the FLD preset's grounding pass on its own detailed captions included). The
batch's records are written in one transaction, so after ``kill -9`` the same command labels what is
left: every image exactly once. An image that cannot be read is recorded as failed and the run goes
on; ``retry_failed`` tries those again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from florence2 import __version__
from florence2.config import DecodingOptions
from florence2.errors import Florence2Error, ImageLoadError, TaskError
from florence2.image import PreparedImage, load_image
from florence2.label.filters import GROUNDING, Filters, region_text_pairs
from florence2.label.sources import SourceItem, count_sources, iter_sources
from florence2.label.store import DatasetStore, Outcome, content_id
from florence2.label.tiles import DEFAULT_OVERLAP, Rect, Tiling, cut, from_tile, merge_tiles
from florence2.label.tta import FUSED_TASKS, View, fuse_boxes
from florence2.pipeline import DEFAULT_MODEL_DIR, EncodedImage, Florence2
from florence2.progress import progress_bar
from florence2.tasks import get_task
from florence2.weights import resolve_checkpoint

OPEN_VOCABULARY = "<OPEN_VOCABULARY_DETECTION>"


@dataclass(frozen=True)
class Preset:
    """A named set of tasks; ``ground``: a caption task whose answer is then grounded."""

    tasks: tuple[str, ...]
    ground: str | None = None
    description: str = ""


PRESETS: dict[str, Preset] = {
    "fld": Preset(
        (
            "<CAPTION>",
            "<DETAILED_CAPTION>",
            "<MORE_DETAILED_CAPTION>",
            "<OD>",
            "<DENSE_REGION_CAPTION>",
            "<OCR_WITH_REGION>",
        ),
        ground="<DETAILED_CAPTION>",
        description="the FLD-5B record: three captions, region-text pairs (<OD>, dense region captions), "
        "phrase-region triplets (grounding the detailed caption), OCR with regions",
    ),
    "detect": Preset(("<OD>",), description="object detection"),
    "caption": Preset(("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>"), description="three captions"),
    "ocr": Preset(("<OCR>", "<OCR_WITH_REGION>"), description="text, and text with its regions"),
}


def parse_ontology(value: str | os.PathLike | Mapping[str, str]) -> dict[str, str]:
    """``"phrase=class,phrase=class"`` (a bare ``phrase`` is its own class), a file of such lines
    (or of one JSON object ``{"phrase": "class"}``), or a mapping -> ``{phrase: class}``."""
    if isinstance(value, Mapping):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    else:
        text = str(value)
        path = Path(text)
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if text.lstrip().startswith("{"):
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as error:
                    raise TaskError(f"ontology file {path} is not valid JSON: {error}") from error
                return parse_ontology(data)
            entries = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        else:
            entries = text.split(",")
        pairs = []
        for entry in entries:
            phrase, _, name = entry.partition("=")
            pairs.append((phrase.strip(), (name or phrase).strip()))
    ontology = {}
    for phrase, name in pairs:
        if not phrase or not name:
            raise TaskError(f"an ontology entry needs a phrase and a class (phrase=class), got {phrase!r}={name!r}")
        ontology[phrase] = name
    if not ontology:
        raise TaskError("the ontology is empty")
    return ontology


@dataclass(frozen=True)
class Plan:
    """What is labeled: the tasks run on every image, the caption task grounded afterwards, the
    ontology's phrases (each an open-vocabulary query) and their classes, the extra views of
    each image whose boxes are fused with its own (:mod:`florence2.label.tta`), and the crops of
    each image whose boxes are merged with its own (:mod:`florence2.label.tiles`)."""

    tasks: tuple[str, ...]
    ground: str | None = None
    ontology: dict[str, str] = field(default_factory=dict)
    views: tuple[View, ...] = ()
    fuse_iou: float = 0.55
    tiling: Tiling | None = None

    @classmethod
    def make(
        cls,
        preset: str | None = None,
        tasks: Sequence[str] | None = None,
        ontology: str | os.PathLike | Mapping[str, str] | None = None,
        tta: Sequence[str] = (),
        fuse_iou: float = 0.55,
        tiles: str | Tiling | None = None,
        tile_overlap: float = DEFAULT_OVERLAP,
    ) -> Plan:
        if preset is not None and preset not in PRESETS:
            raise TaskError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        chosen = PRESETS[preset] if preset else Preset(())
        names = list(chosen.tasks) + [get_task(t).token for t in tasks or ()]
        phrases = parse_ontology(ontology) if ontology is not None else {}
        if not names and not phrases:
            chosen = PRESETS["fld"]
            names = list(chosen.tasks)
        for name in names:
            spec = get_task(name)
            if spec.input != "none":
                raise TaskError(
                    f"{spec.token} needs a {spec.input} input for every image; label with tasks that take "
                    "none (the ontology gives open-vocabulary detection its phrases)"
                )
        try:
            views = tuple(dict.fromkeys(View.parse(v) for v in tta if View.parse(v) != View()))
            tiling = Tiling.parse(tiles, tile_overlap) if isinstance(tiles, str) else tiles
        except ValueError as error:
            raise TaskError(str(error)) from None
        if isinstance(fuse_iou, bool) or not isinstance(fuse_iou, (int, float)) or not 0.0 < fuse_iou <= 1.0:
            raise TaskError(f"fuse_iou must be in (0, 1], got {fuse_iou!r}")
        if tiling is not None and not any(t in FUSED_TASKS for t in names) and not phrases:
            raise TaskError(f"tiles find boxes of {', '.join(FUSED_TASKS)} or an ontology; the plan has none")
        return cls(tuple(dict.fromkeys(names)), chosen.ground, phrases, views, fuse_iou, tiling)

    def settings(self) -> dict[str, Any]:
        out = {"tasks": list(self.tasks), "ground": self.ground, "ontology": self.ontology}
        if self.views:
            out.update(tta=[view.name for view in self.views], fuse_iou=self.fuse_iou)
        if self.tiling is not None:
            out.update(tiles=self.tiling.name, tile_overlap=self.tiling.overlap)
        return out


@dataclass
class LabelSummary:
    """What a labeling run did."""

    dataset: str
    run: int
    resumed: bool
    total: int  # sources seen
    labeled: int = 0  # images labeled by this call
    skipped: int = 0  # sources already labeled by this run (earlier calls)
    duplicates: int = 0  # sources holding an image labeled under another name
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)  # the first ones: source and error
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)  # task -> reason -> regions
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.labeled / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_second": round(self.images_per_second, 3)}

    def lines(self) -> list[str]:
        """A human summary."""
        out = [
            f"dataset {self.dataset}, run {self.run} ({'resumed' if self.resumed else 'new'}): "
            f"{self.labeled} images labeled, {self.skipped} already done, {self.duplicates} duplicates of "
            f"labeled images, {self.failed} failed, in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s)"
        ]
        for task, reasons in sorted(self.dropped.items()):
            out.append(f"  dropped from {task}: " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())))
        for failure in self.failures:
            out.append(f"  failed: {failure['source']}: {failure['error']}")
        if self.failed > len(self.failures):
            out.append(f"  ... and {self.failed - len(self.failures)} more failures (florence2 dataset stats)")
        return out


_SHOWN_FAILURES = 20


@dataclass
class _Item:
    """One source after background reading: its image ready for the model, or its error."""

    source: SourceItem
    image_id: str
    image: PreparedImage | None = None
    error: str | None = None
    seconds: float = 0.0
    tiles: list[tuple[PreparedImage, Rect]] = field(default_factory=list)  # crops and where they are


def run_settings(
    plan: Plan,
    filters: Filters,
    merge_iou: float,
    *,
    model: str,
    fingerprint: str,
    decoding: DecodingOptions,
    dtype: str,
    quantized: str | None,
) -> dict[str, Any]:
    """What defines a run (whichever engine labels it): labeling again with equal settings
    continues it, other settings need a new run."""
    return {
        "model": model,
        "model_fingerprint": fingerprint,
        **plan.settings(),
        "decoding": asdict(decoding),
        "filters": filters.settings(),
        "merge_iou": merge_iou if plan.ground else None,
        "dtype": dtype,
        "quantized": quantized,
        "version": __version__,
    }


def model_fingerprint(folder: Path | None, predictor: Florence2 | None = None) -> str:
    """A digest of the model: of its checkpoint's files (config and weights) when it was loaded from
    ``folder``, else of its tensors."""
    digest = hashlib.sha256()
    files = [] if folder is None else sorted(p for p in folder.iterdir() if p.suffix in _MODEL_FILES and p.is_file())
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    if not files and predictor is not None:
        for name, tensor in predictor.model.state_dict().items():
            if isinstance(tensor, torch.Tensor):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


_MODEL_FILES = (".json", ".safetensors", ".bin")


def _read(item: SourceItem, prepare: Callable[[Any], PreparedImage], tiling: Tiling | None = None) -> _Item:
    started = time.perf_counter()
    try:
        data = item.read()
    except Florence2Error as error:
        return _Item(item, _key_id(item.key), error=str(error), seconds=time.perf_counter() - started)
    except OSError as error:
        return _Item(item, _key_id(item.key), error=f"cannot read {item.key}: {error}")
    if isinstance(data, Image.Image):
        image_id = content_id(np.asarray(data.convert("RGB")).tobytes() + repr(data.size).encode())
    else:
        image_id = content_id(data)
    try:
        if tiling is None:
            image, tiles = prepare(data), []
        else:
            full = load_image(data)
            image = prepare(full)
            tiles = [(prepare(full.crop(rect)), rect) for rect in tiling.rects(full.size)]
    except ImageLoadError as error:
        return _Item(item, image_id, error=str(error), seconds=time.perf_counter() - started)
    return _Item(item, image_id, image=image, seconds=time.perf_counter() - started, tiles=tiles)


def _key_id(key: str) -> str:
    """The id of a source whose bytes could not be read at all: derived from its name."""
    return "unread-" + hashlib.sha256(key.encode()).hexdigest()[:48]


class Labeler:
    """Labels sources into a dataset with one predictor (see :func:`label`)."""

    def __init__(
        self,
        predictor: Florence2,
        plan: Plan,
        *,
        filters: Filters | None = None,
        merge_iou: float = 0.7,
        batch_size: int = 8,
        workers: int = 2,
        decoding: Mapping[str, Any] | None = None,
    ) -> None:
        if batch_size < 1 or workers < 1:
            raise ValueError(f"batch_size and workers must be >= 1, got {batch_size} and {workers}")
        if plan.tiling is not None:  # "auto" chooses each image's grid by the model's input size
            plan = replace(plan, tiling=plan.tiling.for_side(min(predictor.processor.image_processor.size)))
        self.predictor, self.plan = predictor, plan
        self.filters = filters or Filters()
        self.merge_iou = merge_iou
        self.batch_size, self.workers = batch_size, workers
        self.decoding = {k: v for k, v in (decoding or {}).items() if v is not None}
        predictor.decoding_options(**self.decoding)  # unknown options fail now, not mid-run

    def settings(self, model: str, fingerprint: str) -> dict[str, Any]:
        """What defines a run: labeling again with equal settings continues it."""
        p = self.predictor
        return run_settings(
            self.plan,
            self.filters,
            self.merge_iou,
            model=model,
            fingerprint=fingerprint,
            decoding=p.decoding_options(**self.decoding),
            dtype=p.info()["dtype"],
            quantized=p.quantized,
        )

    # --- inference on one batch ---------------------------------------------------------------------

    def infer(
        self, images: Sequence[PreparedImage], tiles: Sequence[Sequence[tuple[PreparedImage, Rect]]] = ()
    ) -> list[dict[str, Any] | Florence2Error]:
        """Every task of the plan on ``images``, from one vision encoding per image; ``tiles``: each
        image's crops (with a tiling plan)."""
        p, plan = self.predictor, self.plan
        encoded = p.encode_images(images, on_error="return")
        good = [i for i, e in enumerate(encoded) if isinstance(e, EncodedImage)]
        results: list[dict[str, Any] | Florence2Error] = [
            {"sequence_scores": {}} if isinstance(e, EncodedImage) else e for e in encoded
        ]
        batch = [encoded[i] for i in good]
        options = dict(batch_size=len(batch), on_error="return", **self.decoding)
        if batch and plan.tasks:
            for i, answer in zip(good, p.predict(batch, list(plan.tasks), **options)):
                results[i] = answer
        if batch and plan.ground:
            captions = [results[i].get(plan.ground, "") if isinstance(results[i], dict) else "" for i in good]
            grounded = [(i, c) for i, c in zip(good, captions) if c.strip()]
            if grounded:
                answers = p.predict(
                    [encoded[i] for i, _ in grounded], GROUNDING, text=[c for _, c in grounded], **options
                )
                for (i, caption), answer in zip(grounded, answers):
                    if isinstance(answer, dict) and isinstance(results[i], dict):
                        results[i][GROUNDING] = {**answer[GROUNDING], "caption": caption}
                        results[i]["sequence_scores"].update(answer["sequence_scores"])
        self._detect_ontology(batch, good, results, options)
        if batch and plan.views:
            self._fuse_views([images[i] for i in good], good, results, options)
        if batch and plan.tiling is not None and tiles:
            self._merge_tiles([images[i].size for i in good], [tiles[i] for i in good], good, results, options)
        return results

    def _detect_ontology(
        self, batch: Sequence[EncodedImage], rows: Sequence[int], results: list, options: dict
    ) -> None:
        """Every ontology phrase's open-vocabulary boxes into ``results[row]``, under its class."""
        for phrase, name in self.plan.ontology.items():
            answers = self.predictor.predict(batch, OPEN_VOCABULARY, text=phrase, **options)
            for i, answer in zip(rows, answers):
                if isinstance(answer, dict) and isinstance(results[i], dict):
                    _add_class(results[i], answer[OPEN_VOCABULARY], name)

    def _box_answers(self, images: Sequence[PreparedImage], options: dict) -> list[dict[str, Any]]:
        """The plan's box tasks (those of :data:`FUSED_TASKS` and the ontology's) on ``images``, one
        vision encoding each; an image that failed answers ``{}``."""
        p, plan = self.predictor, self.plan
        tasks = [t for t in plan.tasks if t in FUSED_TASKS]
        encoded = p.encode_images(images, on_error="return")
        options = {**options, "batch_size": len(images)}
        answers = p.predict(encoded, tasks, **options) if tasks else [{} for _ in images]
        answers = [a if isinstance(a, dict) else {} for a in answers]
        if plan.ontology:
            self._detect_ontology(encoded, range(len(images)), answers, options)
        return answers

    def _fuse_views(self, images: Sequence[PreparedImage], rows: Sequence[int], results: list, options: dict) -> None:
        """The plan's box tasks on every extra view, fused with the image's own boxes."""
        plan = self.plan
        if not any(t in FUSED_TASKS for t in plan.tasks) and not plan.ontology:
            return
        seen = {i: [_boxes(results[i])] for i in rows if isinstance(results[i], dict)}
        for view in plan.views:
            answers = self._box_answers([view.apply(image) for image in images], options)
            for i, image, answer in zip(rows, images, answers):
                if i in seen:
                    seen[i].append(_boxes(answer, view, image.size))
        for i, found in seen.items():
            for task in {task for boxes in found for task in boxes}:
                fused = fuse_boxes([boxes.get(task, []) for boxes in found], plan.fuse_iou)
                _put_boxes(results[i], task, [(box, label, score) for box, label, score, _ in fused])

    def _merge_tiles(
        self,
        sizes: Sequence[tuple[int, int]],
        tiles: Sequence[Sequence[tuple[PreparedImage, Rect]]],
        rows: Sequence[int],
        results: list,
        options: dict,
    ) -> None:
        """The plan's box tasks on every crop of every image, merged with the image's own boxes."""
        seen = {i: [_boxes(results[i])] for i, pieces in zip(rows, tiles) if pieces and isinstance(results[i], dict)}
        crops = [(i, size, crop, rect) for i, size, pieces in zip(rows, sizes, tiles) for crop, rect in pieces]
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            answers = self._box_answers([crop for _, _, crop, _ in chunk], options)
            for (i, size, _, rect), answer in zip(chunk, answers):
                if i not in seen:
                    continue
                placed: dict[str, list] = {}
                for task, found in _boxes(answer).items():
                    moved = [(from_tile(box, rect), label, score) for box, label, score in found]
                    placed[task] = [(box, label, score) for box, label, score in moved if not cut(box, rect, size)]
                seen[i].append(placed)
        for i, found in seen.items():
            for task in {task for boxes in found for task in boxes}:
                _put_boxes(results[i], task, merge_tiles([boxes.get(task, []) for boxes in found]))

    # --- the run ---------------------------------------------------------------------------------------

    def run(
        self,
        sources: Sequence[str | os.PathLike],
        store: DatasetStore,
        run: int,
        *,
        video_fps: float | None = None,
        video_stride: int | None = None,
        retry_failed: bool = False,
        limit: int | None = None,
        progress: bool | None = None,
        summary: LabelSummary,
    ) -> LabelSummary:
        started = time.perf_counter()
        items = iter_sources(sources, video_fps=video_fps, video_stride=video_stride)
        total = count_sources(sources, video_fps=video_fps, video_stride=video_stride)
        if limit is not None:
            items, total = islice(items, limit), min(total, limit)
        summary.total = total
        drops: Counter = Counter()
        with (
            progress_bar(total, enabled=progress, unit="img", desc="labeling") as bar,
            ThreadPoolExecutor(self.workers, thread_name_prefix="florence2-read") as pool,
        ):
            for batch in self._batches(items, store, run, retry_failed, pool, summary, bar):
                drops.update(self._label_batch(batch, store, run, summary, retry_failed))
                bar.update(len(batch))
                bar.set_postfix(failed=summary.failed)
        summary.seconds = time.perf_counter() - started
        for (task, reason), count in drops.items():
            summary.dropped.setdefault(task, {})[reason] = count
        return summary

    def _batches(
        self,
        items: Iterator[SourceItem],
        store: DatasetStore,
        run: int,
        retry_failed: bool,
        pool: ThreadPoolExecutor,
        summary: LabelSummary,
        bar: Any,
    ) -> Iterator[list[_Item]]:
        """Batches of read images, reading ahead on the pool while the caller runs the model."""
        prepare = self.predictor.prepare_image
        # images read ahead: fewer with tiles, each of whose crops is held as model input too
        tiling = self.plan.tiling
        crops = 0 if tiling is None else 4 if tiling.auto else tiling.cols * tiling.rows  # auto: a 2 x 2 guess
        ahead = max(self.batch_size, (2 * self.batch_size + 2 * self.workers) // (1 + crops))
        pending: list[Future] = []
        batch: list[_Item] = []
        for chunk in _chunks(items, 4 * self.batch_size):
            done = store.finished(run, [(item.key, item.stamp) for item in chunk], retry_failed)
            skipped = [item for item in chunk if item.key in done]
            summary.skipped += len(skipped)
            bar.update(len(skipped))
            for item in chunk:
                if item.key in done:
                    continue
                pending.append(pool.submit(_read, item, prepare, self.plan.tiling))
                while len(pending) > ahead or (pending and pending[0].done()):
                    batch.append(pending.pop(0).result())
                    if len(batch) == self.batch_size:
                        yield batch
                        batch = []
        for future in pending:
            batch.append(future.result())
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _label_batch(
        self, batch: list[_Item], store: DatasetStore, run: int, summary: LabelSummary, retry_failed: bool
    ) -> Counter:
        known = store.labeled_images(run, [item.image_id for item in batch], retry_failed)
        outcomes, todo = plan_batch(batch, known)
        drops = self.label_items(outcomes, todo)
        record(store, run, list(outcomes.values()), drops, summary)
        return drops

    def label_items(self, outcomes: Mapping[str, Outcome], todo: Sequence[_Item]) -> Counter:
        """Run the plan on ``todo`` and put each answer, filtered, into its outcome; returns the drops."""
        started = time.perf_counter()
        answers = self.infer([item.image for item in todo], [item.tiles for item in todo]) if todo else []
        per_image = (time.perf_counter() - started) / max(1, len(todo))
        drops: Counter = Counter()
        for item, answer in zip(todo, answers):
            outcome = outcomes[item.image_id]
            outcome.seconds += per_image
            if isinstance(answer, Florence2Error):
                outcome.error = str(answer)
                continue
            kept, dropped = self.filters.apply(answer, item.image.size)
            drops.update(dropped)
            if self.plan.ground:
                kept["regions"] = region_text_pairs(kept, self.merge_iou)
            outcome.results = kept
        return drops


def plan_batch(batch: Sequence[_Item], known: set[str]) -> tuple[dict[str, Outcome], list[_Item]]:
    """One outcome per distinct image of ``batch`` (more names of one image become its aliases;
    an image in ``known``, labeled earlier, only gets its names recorded), and the items to label."""
    outcomes: dict[str, Outcome] = {}
    todo: list[_Item] = []
    for item in batch:
        name = (item.source.key, item.source.source, item.source.stamp)
        if item.image_id in outcomes:  # the same image twice in this batch
            outcomes[item.image_id].aliases.append(name)
            continue
        outcome = Outcome(*name, item.image_id, seconds=item.seconds, alias_only=item.image_id in known)
        outcomes[item.image_id] = outcome
        if outcome.alias_only:
            continue
        if item.image is None:
            outcome.error = item.error
        else:
            outcome.width, outcome.height = item.image.size
            todo.append(item)
    return outcomes, todo


def record(store: DatasetStore, run: int, outcomes: Sequence[Outcome], drops: Counter, summary: LabelSummary) -> None:
    """Write one batch's outcomes in one transaction and count them in ``summary``."""
    store.commit(run, outcomes, drops)
    for outcome in outcomes:
        summary.duplicates += len(outcome.aliases) + outcome.alias_only
        if outcome.alias_only:
            continue
        if outcome.results is None:
            summary.failed += 1
            if len(summary.failures) < _SHOWN_FAILURES:
                summary.failures.append({"source": outcome.key, "error": outcome.error or "unknown error"})
        else:
            summary.labeled += 1


def _boxes(result: Mapping[str, Any], view: View | None = None, size: tuple[int, int] | None = None) -> dict:
    """``{task: [(box, label, score)]}`` of the fused tasks in one result, mapped back from ``view``."""
    out = {}
    for task, (box_key, label_key, score_key) in FUSED_TASKS.items():
        answer = result.get(task)
        if isinstance(answer, dict) and box_key in answer:
            boxes = answer[box_key] if view is None else [view.unmap(b, size) for b in answer[box_key]]
            out[task] = list(zip(boxes, answer[label_key], answer.get(score_key) or [None] * len(boxes)))
    return out


def _put_boxes(result: dict[str, Any], task: str, boxes: Sequence[tuple[Any, str, Any]]) -> None:
    """Set the boxes, labels and scores of ``task`` in ``result`` to ``(box, label, score)`` triples."""
    box_key, label_key, score_key = FUSED_TASKS[task]
    result[task] = {
        **result.get(task, {}),
        box_key: [box for box, _, _ in boxes],
        label_key: [label for _, label, _ in boxes],
        score_key: [score for _, _, score in boxes],
    }


def _add_class(result: dict[str, Any], answer: Mapping[str, Any], name: str) -> None:
    """Add one ontology phrase's open-vocabulary boxes to the image's result, labelled with the class."""
    merged = result.setdefault(
        OPEN_VOCABULARY,
        {
            "bboxes": [],
            "bboxes_labels": [],
            "bboxes_scores": [],
            "polygons": [],
            "polygons_labels": [],
            "polygons_scores": [],
        },
    )
    boxes = answer.get("bboxes", [])
    merged["bboxes"].extend(boxes)
    merged["bboxes_labels"].extend([name] * len(boxes))
    merged["bboxes_scores"].extend(answer.get("bboxes_scores", [None] * len(boxes)))


def _chunks(items: Iterator[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    while chunk := list(islice(items, size)):
        yield chunk


@dataclass(frozen=True)
class LabelJob:
    """Everything one labeling command asked for, whichever engine runs it (see :func:`label`)."""

    sources: list[str | os.PathLike]
    out: Path
    model: str | os.PathLike | Florence2 | None
    plan: Plan
    filters: Filters
    merge_iou: float
    batch_size: int
    workers: int
    device: str | None
    dtype: str | None
    quantize: str | None
    video_fps: float | None
    video_stride: int | None
    new_run: bool
    retry_failed: bool
    limit: int | None
    progress: bool | None
    decoding: dict[str, Any]
    ray_address: str | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0

    @property
    def model_folder(self) -> Path:
        """The checkpoint folder (the embedded model's without a model)."""
        return Path(DEFAULT_MODEL_DIR if self.model is None else resolve_checkpoint(self.model)).resolve()

    @property
    def model_name(self) -> str:
        return str(self.model) if self.model is not None else "embedded"

    def labeler(self, predictor: Florence2, workers: int = 2) -> Labeler:
        """The job's labeler (plan, filters, merging, batch size, decoding) around ``predictor``,
        with ``workers`` reading threads."""
        return Labeler(
            predictor,
            self.plan,
            filters=self.filters,
            merge_iou=self.merge_iou,
            batch_size=self.batch_size,
            workers=workers,
            decoding=self.decoding,
        )


def label_locally(job: LabelJob) -> LabelSummary:
    """The local engine: this process reads (``job.workers`` threads) and runs the model."""
    model = job.model
    if isinstance(model, Florence2):
        predictor, model_name, fingerprint = model, "given predictor", model_fingerprint(None, model)
    else:
        predictor = Florence2.from_pretrained(model, device=job.device, dtype=job.dtype, quantize=job.quantize)
        model_name, fingerprint = job.model_name, model_fingerprint(job.model_folder, predictor)
    labeler = job.labeler(predictor, workers=job.workers)
    with DatasetStore(job.out, create=True) as store:
        run, resumed = store.run_for(labeler.settings(model_name, fingerprint), new_run=job.new_run)
        summary = LabelSummary(dataset=str(job.out), run=run, resumed=resumed, total=0)
        return labeler.run(
            job.sources,
            store,
            run,
            video_fps=job.video_fps,
            video_stride=job.video_stride,
            retry_failed=job.retry_failed,
            limit=job.limit,
            progress=job.progress,
            summary=summary,
        )
