"""Labeling on a Ray cluster: the same runs, records and exactly-once rule as the local engine, with
images read by Ray tasks and labeled by a pool of Ray actors that each load the model once.

    florence2 label s3-mounted/photos/ --out my-dataset --engine ray --workers 8 --gpus-per-worker 1

The driver (the process running the command) enumerates the sources, leaves out what the dataset
already has, and builds a Ray Dataset of the rest: ``map_batches`` of a read function (Ray tasks:
read the bytes, hash them, decode and resize to model input) then ``map_batches`` of
:class:`LabelWorker` (``--workers`` actors, ``--gpus-per-worker`` GPUs each, one model each, the
local engine's batch inference and filters). The driver streams the labeled batches back and
writes each in one transaction of the dataset store, as the local engine does: only the driver
writes, so many workers finishing at once never contend for the database, and a crash of the
driver or of a worker loses at most the batches in flight; the same command again labels the rest.

Ray is an optional dependency (``pip install 'florence2[ray]'``). Without ``ray_address`` (or
``RAY_ADDRESS`` in the environment) a local Ray is started. Workers read the model folder and the
sources from their own file systems: a shared mount, or copies at the same paths.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from florence2.config import DecodingOptions
from florence2.errors import Florence2Error
from florence2.image import ImageProcessor, PreparedImage
from florence2.label.engine import (
    LabelJob,
    LabelSummary,
    _Item,
    _read,
    model_fingerprint,
    plan_batch,
    record,
    run_settings,
)
from florence2.label.sources import SourceItem, count_sources, iter_sources, open_source
from florence2.label.store import DatasetStore, Outcome
from florence2.label.tiles import Tiling
from florence2.pipeline import Florence2
from florence2.progress import progress_bar
from florence2.weights import parse_dtype, read_config, read_generation_settings


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise Florence2Error(
            f"--engine ray needs Ray: pip install 'florence2[ray]' ({error}); or label with the local engine"
        ) from error
    return ray


# --- reading (Ray tasks) -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _processor(folder: str) -> ImageProcessor:
    return ImageProcessor.from_pretrained(folder)


def read_batch(batch: Mapping[str, np.ndarray], folder: str, tiling: Tiling | None = None) -> dict[str, np.ndarray]:
    """Read, hash and prepare the images of a batch of sources, and their crops with a ``tiling``
    (runs in Ray tasks)."""
    processor = _processor(folder)
    height, width = processor.size
    tiling = None if tiling is None else tiling.for_side(min(processor.size))
    columns: dict[str, list] = {name: [] for name in ("image_id", "pixels", "width", "height", "error", "seconds")}
    crops = []
    for source in batch["source"]:
        parsed = json.loads(source)
        item = _read(SourceItem("", parsed, None, functools.partial(open_source, parsed)), processor.prepare, tiling)
        image = item.image
        crops.append(item.tiles)
        columns["image_id"].append(item.image_id)
        columns["pixels"].append(
            image.pixel_values.numpy() if image is not None else np.zeros((3, height, width), np.float32)
        )
        columns["width"].append(image.size[0] if image is not None else 0)
        columns["height"].append(image.size[1] if image is not None else 0)
        columns["error"].append(item.error or "")
        columns["seconds"].append(item.seconds)
    out = {name: np.asarray(values) for name, values in columns.items() if name != "pixels"}
    out["pixels"] = np.stack(columns["pixels"])
    if tiling is not None:  # each row's crops, padded to the batch's most
        most = max(1, max(len(c) for c in crops))
        out["tiles"] = np.zeros((len(crops), most, 3, height, width), np.float32)
        out["rects"] = np.zeros((len(crops), most, 4), np.int64)
        out["tile_count"] = np.asarray([len(c) for c in crops], np.int64)
        for i, row in enumerate(crops):
            for k, (crop, rect) in enumerate(row):
                out["tiles"][i, k], out["rects"][i, k] = crop.pixel_values.numpy(), rect
    for name in ("key", "source", "stamp"):
        out[name] = np.asarray(batch[name])
    return out


# --- labeling (Ray actors) -----------------------------------------------------------------------------


class LabelWorker:
    """A Ray actor: one model, the local engine's inference and filters on each batch it is given."""

    def __init__(self, job: LabelJob, folder: str) -> None:
        torch.set_num_threads(max(1, int(job.cpus_per_worker)))
        device = job.device
        if device is None and torch.cuda.is_available():
            device = "cuda"
        predictor = Florence2.from_pretrained(folder, device=device, dtype=job.dtype, quantize=job.quantize)
        self.labeler = job.labeler(predictor)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = []
        for i in range(len(batch["key"])):
            source = SourceItem(str(batch["key"][i]), json.loads(batch["source"][i]), _stamp(batch["stamp"][i]), None)
            item = _Item(source, str(batch["image_id"][i]), error=str(batch["error"][i]) or None)
            item.seconds = float(batch["seconds"][i])
            if item.error is None:
                pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][i]))
                item.image = PreparedImage(pixels, (int(batch["width"][i]), int(batch["height"][i])))
                if "tiles" in batch:
                    count = int(batch["tile_count"][i])
                    rects = [tuple(int(v) for v in rect) for rect in batch["rects"][i][:count]]
                    crops = [torch.from_numpy(np.ascontiguousarray(crop)) for crop in batch["tiles"][i][:count]]
                    item.tiles = [(PreparedImage(c, (r[2] - r[0], r[3] - r[1])), r) for c, r in zip(crops, rects)]
            items.append(item)
        outcomes, todo = plan_batch(items, known=set())
        drops = self.labeler.label_items(outcomes, todo)
        return _outcome_columns(list(outcomes.values()), drops)


def _stamp(value: Any) -> str | None:
    return str(value) or None


def _outcome_columns(outcomes: Sequence[Outcome], drops: Counter) -> dict[str, np.ndarray]:
    rows = [
        {
            "key": o.key,
            "source": json.dumps(o.source),
            "stamp": o.stamp or "",
            "image_id": o.image_id,
            "width": o.width or 0,
            "height": o.height or 0,
            "results": json.dumps(o.results) if o.results is not None else "",
            "error": o.error or "",
            "seconds": o.seconds,
            "aliases": json.dumps(o.aliases),
            # a batch's drops ride on its first row
            "drops": json.dumps([[t, r, n] for (t, r), n in drops.items()] if i == 0 else []),
        }
        for i, o in enumerate(outcomes)
    ]
    return {name: np.asarray([row[name] for row in rows]) for name in rows[0]} if rows else {}


def _outcomes(batch: Mapping[str, np.ndarray]) -> tuple[list[Outcome], Counter]:
    """The driver's side of :func:`_outcome_columns`."""
    outcomes, drops = [], Counter()
    for i in range(len(batch["key"])):
        results = str(batch["results"][i])
        outcomes.append(
            Outcome(
                key=str(batch["key"][i]),
                source=json.loads(batch["source"][i]),
                stamp=_stamp(batch["stamp"][i]),
                image_id=str(batch["image_id"][i]),
                width=int(batch["width"][i]) or None,
                height=int(batch["height"][i]) or None,
                results=json.loads(results) if results else None,
                error=str(batch["error"][i]) or None,
                seconds=float(batch["seconds"][i]),
                aliases=[tuple(a) for a in json.loads(batch["aliases"][i])],
            )
        )
        for task, reason, count in json.loads(batch["drops"][i]):
            drops[(task, reason)] += count
    return outcomes, drops


# --- the driver ----------------------------------------------------------------------------------------


def label_with_ray(job: LabelJob) -> LabelSummary:
    """Run a labeling job on Ray (see the module docstring): ``job.workers`` actors with
    ``job.gpus_per_worker`` GPUs and ``job.cpus_per_worker`` CPUs each, on the cluster at
    ``job.ray_address`` (or ``RAY_ADDRESS``, or a local Ray). ``job.model`` is a checkpoint folder
    every worker can read."""
    if isinstance(job.model, Florence2):
        raise Florence2Error(
            "the ray engine loads the model in every worker: pass a checkpoint folder, not a predictor"
        )
    ray = _import_ray()
    folder = job.model_folder
    decoding = DecodingOptions.for_model(read_config(folder), **{**read_generation_settings(folder), **job.decoding})
    settings = run_settings(
        job.plan,
        job.filters,
        job.merge_iou,
        model=job.model_name,
        fingerprint=model_fingerprint(folder),
        decoding=decoding,
        dtype=str(parse_dtype(job.dtype)).removeprefix("torch."),
        quantized=job.quantize,
    )
    started = time.perf_counter()
    with DatasetStore(job.out, create=True) as store:
        run, resumed = store.run_for(settings, new_run=job.new_run)
        summary = LabelSummary(dataset=str(job.out), run=run, resumed=resumed, total=0)
        total = count_sources(job.sources, video_fps=job.video_fps, video_stride=job.video_stride)
        summary.total = total if job.limit is None else min(total, job.limit)
        todo = _remaining(store, run, job, summary)
        with progress_bar(summary.total, enabled=job.progress, unit="img", desc="labeling on ray") as bar:
            bar.update(summary.skipped)
            if todo:
                _start(ray, job.ray_address)
                drops: Counter = Counter()
                for batch in _pipeline(ray, todo, job, str(folder)).iter_batches(batch_size=None, batch_format="numpy"):
                    outcomes, batch_drops = record_batch(store, run, batch, summary, job.retry_failed)
                    drops.update(batch_drops)
                    bar.update(sum(1 + len(o.aliases) for o in outcomes))
                    bar.set_postfix(failed=summary.failed)
                for (task, reason), count in drops.items():
                    summary.dropped.setdefault(task, {})[reason] = count
    summary.seconds = time.perf_counter() - started
    return summary


def record_batch(
    store: DatasetStore, run: int, batch: Mapping[str, np.ndarray], summary: LabelSummary, retry_failed: bool
) -> tuple[list[Outcome], Counter]:
    """Write one batch of labeled rows that Ray handed the driver, in one transaction, and count it.

    An image the run has a record of (labeled by an earlier batch under another name), or one met
    earlier in this batch (Ray may hand the driver several workers' batches as one, so the same
    image under two names can arrive together, each labeled), records only its name."""
    outcomes, drops = _outcomes(batch)
    seen = store.labeled_images(run, [o.image_id for o in outcomes], retry_failed)
    for outcome in outcomes:
        if outcome.image_id in seen:
            outcome.alias_only, outcome.results, outcome.error = True, None, None
        seen.add(outcome.image_id)
    record(store, run, outcomes, drops, summary)
    return outcomes, drops


def _start(ray: Any, address: str | None) -> None:
    """Join the cluster (or start a local Ray), with Ray's own progress output off: the command
    draws its own bar and summary."""
    import logging

    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # the local Ray's own processes
    ray.init(
        address=address,
        ignore_reinit_error=True,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def _remaining(store: DatasetStore, run: int, job: LabelJob, summary: LabelSummary) -> list[dict[str, str]]:
    """The sources this run has not labeled yet, as rows of the Ray Dataset."""
    rows, seen = [], 0
    chunk: list[SourceItem] = []

    def flush() -> None:
        done = store.finished(run, [(item.key, item.stamp) for item in chunk], job.retry_failed)
        summary.skipped += len(done)
        rows.extend(
            {"key": i.key, "source": json.dumps(i.source), "stamp": i.stamp or ""} for i in chunk if i.key not in done
        )
        chunk.clear()

    for item in iter_sources(job.sources, video_fps=job.video_fps, video_stride=job.video_stride):
        if job.limit is not None and seen >= job.limit:
            break
        seen += 1
        chunk.append(item)
        if len(chunk) >= 500:
            flush()
    flush()
    return rows


def _pipeline(ray: Any, rows: list[dict[str, str]], job: LabelJob, folder: str) -> Any:
    dataset = ray.data.from_items(rows)
    # reading asks for no CPU of its own: actors may hold every CPU of a small cluster, and reads
    # must still run (a few at a time per worker, so they stay just ahead of the models)
    dataset = dataset.map_batches(
        read_batch,
        fn_kwargs={"folder": folder, "tiling": job.plan.tiling},
        batch_size=job.batch_size,
        batch_format="numpy",
        num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=2 * job.workers),
    )
    return dataset.map_batches(
        LabelWorker,
        fn_constructor_kwargs={"job": job, "folder": folder},
        batch_size=job.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=job.workers),
        num_cpus=job.cpus_per_worker,
        num_gpus=job.gpus_per_worker,
    )
