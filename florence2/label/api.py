"""``label``: one labeling command, run by the local engine or on Ray.

>>> from florence2.label import label
>>> summary = label(["photos/", "shards/*.tar", "clip.mp4"], "my-dataset", preset="fld")
>>> summary.labeled, summary.failed, summary.images_per_second
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from florence2.label.engine import LabelJob, LabelSummary, Plan, label_locally
from florence2.label.filters import Filters
from florence2.label.tiles import DEFAULT_OVERLAP
from florence2.pipeline import Florence2

ENGINES = ("local", "ray")


def label(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | Florence2 | None = None,
    preset: str | None = None,
    tasks: Sequence[str] | None = None,
    ontology: str | os.PathLike | Mapping[str, str] | None = None,
    tta: Sequence[str] = (),
    fuse_iou: float = 0.55,
    tiles: str | None = None,
    tile_overlap: float = DEFAULT_OVERLAP,
    batch_size: int = 8,
    workers: int = 2,
    device: str | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
    video_fps: float | None = None,
    video_stride: int | None = None,
    filters: Filters | None = None,
    merge_iou: float = 0.7,
    new_run: bool = False,
    retry_failed: bool = False,
    limit: int | None = None,
    progress: bool | None = False,
    engine: str = "local",
    ray_address: str | None = None,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    **decoding: Any,
) -> LabelSummary:
    """Label images, archives and videos into the dataset folder ``out`` (created when missing).

    sources: image files, folders (recursive), glob patterns, text files listing paths, ``.tar``
        shards and videos (:mod:`florence2.label.sources`).
    model: a checkpoint folder, a loaded :class:`~florence2.Florence2`, or None (the embedded model).
    preset / tasks / ontology: what is labeled (:data:`PRESETS`; task tokens; ``{phrase: class}``
        detected by open-vocabulary detection with real scores); nothing given: the ``fld`` preset.
    tta: extra views of every image (``"flip"``, ``"zoom0.8"``, ``"flip+zoom0.8"``) whose boxes of
        ``<OD>``, ``<REGION_PROPOSAL>`` and the ontology are fused with the image's own
        (:mod:`florence2.label.tta`).
    tiles: ``"COLSxROWS"`` (e.g. ``"2x2"``) or ``"auto"`` (each image's grid by its size, about one
        crop per model input): the same box tasks also run on a grid of crops of the full-resolution
        image, each sharing ``tile_overlap`` of itself with its neighbours, and their
        boxes are merged with the image's own: small objects in large images
        (:mod:`florence2.label.tiles`).
    filters: :class:`~florence2.label.filters.Filters` applied before anything is stored.
    new_run: label a dataset made with other settings (model, tasks, decoding, filters) as a new run.
    retry_failed: label again the images a previous call of this run could not read.
    engine: ``"local"`` (this process; ``workers`` read images) or ``"ray"``
        (:mod:`florence2.label.ray_engine`: ``workers`` actors with ``gpus_per_worker`` GPUs and
        ``cpus_per_worker`` CPUs each, on the cluster at ``ray_address``, or a local Ray).
    decoding: :class:`~florence2.config.DecodingOptions` fields (``num_beams``, ...).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {ENGINES}")
    if batch_size < 1 or workers < 1:
        raise ValueError(f"batch_size and workers must be >= 1, got {batch_size} and {workers}")
    job = LabelJob(
        sources=[sources] if isinstance(sources, (str, os.PathLike)) else list(sources),
        out=Path(out),
        model=model,
        plan=Plan.make(preset, tasks, ontology, tta, fuse_iou, tiles, tile_overlap),
        filters=filters or Filters(),
        merge_iou=merge_iou,
        batch_size=batch_size,
        workers=workers,
        device=device,
        dtype=dtype,
        quantize=quantize,
        video_fps=video_fps,
        video_stride=video_stride,
        new_run=new_run,
        retry_failed=retry_failed,
        limit=limit,
        progress=progress,
        decoding={k: v for k, v in decoding.items() if v is not None},
        ray_address=ray_address,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
    )
    if engine == "ray":
        from florence2.label.ray_engine import label_with_ray

        return label_with_ray(job)
    return label_locally(job)
