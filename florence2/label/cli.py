"""``florence2 label`` and ``florence2 dataset stats|export|search``.

    florence2 label photos/ shards/*.tar clip.mp4 --out my-dataset --preset fld
    florence2 label photos/ --out cars --ontology "car=vehicle,truck=vehicle,person" --min-score 0.2
    florence2 dataset stats my-dataset [--json]
    florence2 dataset search my-dataset "red car" [--json]
    florence2 dataset export my-dataset --format coco --out cars-coco --val-fraction 0.1

``florence2 label`` exits with 0 when every image was labeled, 1 when some could not be read (they
are recorded as failed, with their errors, and listed in the summary), 2 on an error that stops it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from florence2.config import add_device_arguments
from florence2.label.api import label
from florence2.label.engine import PRESETS
from florence2.label.filters import Filters
from florence2.label.store import DatasetStore
from florence2.label.tiles import DEFAULT_OVERLAP
from florence2.label.tracks import DEFAULT_GAP, DEFAULT_IOU


def _add_filter_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (regions dropped are counted by reason)")
    g.add_argument("--min-score", type=float, help="drop regions scoring below this (0..1)")
    g.add_argument("--nms-iou", type=float, help="non-maximum suppression within each task at this IoU")
    g.add_argument("--nms", choices=["class", "agnostic"], default="class", help="NMS per label or across labels")
    g.add_argument("--min-area", type=float, help="drop boxes covering less than this share of the image (0..1)")
    g.add_argument("--max-area", type=float, help="drop boxes covering more than this share of the image (0..1)")
    g.add_argument(
        "--keep-all-phrases",
        action="store_true",
        help="keep grounding phrases on the blocklist or absent from their caption (dropped by default)",
    )


def _filters(args: argparse.Namespace) -> Filters:
    try:
        return Filters(
            min_score=args.min_score,
            min_area=args.min_area,
            max_area=args.max_area,
            nms_iou=args.nms_iou,
            nms=args.nms,
            blocklist=frozenset() if args.keep_all_phrases else Filters().blocklist,
            phrases_in_caption=not args.keep_all_phrases,
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def add_label_parser(sub: Any) -> None:
    p = sub.add_parser(
        "label",
        help="label images, archives and videos into a dataset",
        description="Label images into a resumable, searchable dataset. Rerun the same command after an "
        "interruption: finished images are skipped, every image is labeled exactly once.",
    )
    p.add_argument(
        "sources", nargs="+", help="image files, folders, glob patterns, path lists (.txt), .tar shards, videos"
    )
    p.add_argument("--out", required=True, help="the dataset folder (created when missing)")
    p.add_argument(
        "--preset", choices=sorted(PRESETS), help="a named set of tasks (default fld unless --task/--ontology)"
    )
    p.add_argument("--task", action="append", help="a task without input, e.g. OD (repeatable; added to the preset)")
    p.add_argument("--ontology", help='"phrase=class,phrase=class" or a file of such lines: open-vocabulary detection')
    p.add_argument(
        "--tta",
        action="append",
        default=[],
        help="an extra view of every image, its boxes fused with its own: flip, zoom0.8, flip+zoom0.8 (repeatable)",
    )
    p.add_argument("--fuse-iou", type=float, default=0.55, help="IoU at which boxes of different views fuse")
    p.add_argument(
        "--tiles", help="also find boxes on full-resolution crops: COLSxROWS (e.g. 2x2), or auto (by image size)"
    )
    p.add_argument("--tile-overlap", type=float, default=DEFAULT_OVERLAP, help="share of a crop its neighbours see")
    p.add_argument("--model", help="checkpoint folder (either public layout) or hub id; default: embedded model")
    p.add_argument("--batch-size", type=int, default=8, help="images per model batch")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local: threads reading images ahead of the model (default 2); ray: actors, one model each (default 1)",
    )
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="this process, or a Ray cluster")
    p.add_argument("--ray-address", help="the Ray cluster to join (default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="ray: GPUs each actor takes")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="ray: CPUs each actor takes")
    add_device_arguments(p)
    p.add_argument("--quantize", choices=["int8"], help="int8 linear layers (CPU)")
    video = p.add_mutually_exclusive_group()
    video.add_argument("--video-fps", type=float, help="frames sampled per second of video (default 1)")
    video.add_argument("--video-stride", type=int, help="take every Nth frame of a video")
    p.add_argument("--num-beams", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--no-repeat-ngram-size", type=int)
    _add_filter_arguments(p)
    p.add_argument("--merge-iou", type=float, default=0.7, help="IoU at which boxes of different tasks merge (fld)")
    p.add_argument("--new-run", action="store_true", help="label a dataset made with other settings as a new run")
    p.add_argument("--retry-failed", action="store_true", help="try again the images this run could not read")
    p.add_argument("--limit", type=int, help="stop after this many sources")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr")
    p.set_defaults(func=cmd_label)


def cmd_label(args: argparse.Namespace) -> int:
    decoding = {
        "num_beams": args.num_beams,
        "max_new_tokens": args.max_new_tokens,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
    }
    summary = label(
        args.sources,
        args.out,
        model=args.model,
        preset=args.preset,
        tasks=args.task,
        ontology=args.ontology,
        tta=[view for value in args.tta for view in value.split(",") if view],
        fuse_iou=args.fuse_iou,
        tiles=args.tiles,
        tile_overlap=args.tile_overlap,
        batch_size=args.batch_size,
        workers=args.workers or (1 if args.engine == "ray" else 2),
        engine=args.engine,
        ray_address=args.ray_address,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
        video_fps=args.video_fps,
        video_stride=args.video_stride,
        filters=_filters(args),
        merge_iou=args.merge_iou,
        new_run=args.new_run,
        retry_failed=args.retry_failed,
        limit=args.limit,
        progress=args.progress,
        **decoding,
    )
    if args.json:
        print(json.dumps(summary.to_dict(), ensure_ascii=False))
    else:
        print("\n".join(summary.lines()), file=sys.stderr)
    return 1 if summary.failed else 0


def add_dataset_parser(sub: Any) -> None:
    p = sub.add_parser("dataset", help="statistics, search, export and captions of a labeled dataset")
    commands = p.add_subparsers(dest="dataset_command", required=True)

    s = commands.add_parser("stats", help="images labeled and failed, regions per task and label, scores, runs")
    s.add_argument("dataset")
    s.add_argument("--run", type=int, help="a run id (default: the latest)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)

    q = commands.add_parser("search", help="full-text search over captions, region labels and OCR text")
    q.add_argument("dataset")
    q.add_argument("query")
    q.add_argument("--run", type=int, help="a run id (default: the latest)")
    q.add_argument("--limit", type=int, default=20)
    q.add_argument("--json", action="store_true", help="print the hits as a JSON list, best first")
    q.set_defaults(func=cmd_search)

    e = commands.add_parser("export", help="write the dataset for other tools (and florence2 finetune)")
    e.add_argument("dataset")
    e.add_argument(
        "--format", required=True, help="coco, yolo, jsonl, captions, parquet, labelstudio or mot (video tracks)"
    )
    e.add_argument("--out", required=True, help="the export folder")
    e.add_argument("--run", type=int, help="a run id (default: the latest)")
    e.add_argument("--task", help="the task whose regions (coco, yolo, labelstudio, mot) or captions are exported")
    e.add_argument("--val-fraction", type=float, default=0.0, help="share of images in a val split (by image id)")
    e.add_argument("--seed", type=int, default=0, help="seed of the split")
    e.add_argument(
        "--images", choices=["link", "copy", "none"], default="link", help="how image files go into the export"
    )
    e.add_argument("--track-iou", type=float, default=DEFAULT_IOU, help="mot: least IoU to continue a track")
    e.add_argument(
        "--track-gap", type=int, default=DEFAULT_GAP, help="mot: sampled frames in a row a track may miss and go on"
    )
    e.add_argument("--track-any-label", action="store_true", help="mot: a box may continue a track of another label")
    _add_filter_arguments(e)
    e.set_defaults(func=cmd_export)

    add_captions_parser(commands)


def add_captions_parser(commands: Any) -> None:
    c = commands.add_parser(
        "captions", help="write each image's caption beside its file (photo.jpg -> photo.txt), for LoRA trainers"
    )
    c.add_argument("dataset")
    c.add_argument("--task", help="CAPTION, DETAILED_CAPTION or MORE_DETAILED_CAPTION (default: the most detailed)")
    c.add_argument("--run", type=int, help="a run id (default: the latest)")
    c.add_argument("--prefix", default="", help='text put before every caption, e.g. a trigger word: "ohwx, "')
    c.add_argument("--overwrite", action="store_true", help="replace caption files that exist (kept by default)")
    c.add_argument("--extension", default=".txt", help="of the caption files (default .txt)")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.set_defaults(func=cmd_captions)


def cmd_captions(args: argparse.Namespace) -> int:
    from florence2.label.export import write_sidecar_captions

    summary = write_sidecar_captions(
        args.dataset, task=args.task, run=args.run, prefix=args.prefix, overwrite=args.overwrite,
        extension=args.extension,
    )  # fmt: skip
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
        return 0
    print(
        f"{summary['task']}: {summary['written']} caption files written, {summary['kept']} existing kept, "
        f"{summary['skipped_count']} images or names skipped"
    )
    for skipped in summary["skipped"]:
        print(f"  skipped {skipped['source']}: {skipped['reason']}", file=sys.stderr)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with DatasetStore(args.dataset) as store:
        stats = store.stats(args.run)
    if args.json:
        print(json.dumps(stats, ensure_ascii=False, indent=2))
        return 0
    print(f"{stats['dataset']} run {stats['run']}: {stats['images']} images labeled, {stats['failed']} failed")
    for task, info in stats["regions"].items():
        top = ", ".join(f"{label} {n}" for label, n in list(info["labels"].items())[:10])
        print(f"  {task}: {info['total']} regions ({top})")
    for task, reasons in stats["dropped"].items():
        print(f"  dropped from {task}: " + ", ".join(f"{n} {r}" for r, n in reasons.items()))
    print("  scores: " + "  ".join(f"{b}: {n}" for b, n in stats["score_histogram"].items()))
    for run in stats["runs"]:
        settings = run["settings"]
        print(
            f"  run {run['id']}: {run['images']} images, {run['failed']} failed; model {settings.get('model')}, "
            f"tasks {', '.join(settings.get('tasks', []))}"
        )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    with DatasetStore(args.dataset) as store:
        hits = store.search(args.query, args.run, args.limit)
    if args.json:
        print(json.dumps(hits, ensure_ascii=False))
        return 0
    for hit in hits:
        texts = "; ".join(dict.fromkeys(m["text"] for m in hit["matches"]))
        print(f"{hit['score']:8.3f}  {_where(hit['source'])}  {texts[:160]}")
    if not hits:
        print("no matches", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from florence2.label.export import export_dataset

    summary = export_dataset(
        args.dataset,
        args.out,
        args.format,
        run=args.run,
        task=args.task,
        val_fraction=args.val_fraction,
        seed=args.seed,
        images=args.images,
        track_iou=args.track_iou,
        track_gap=args.track_gap,
        track_by_label=not args.track_any_label,
        filters=_filters(args),
    )
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


def _where(source: dict[str, Any]) -> str:
    if "path" in source:
        return source["path"]
    if "member" in source:
        return f"{source['archive']}::{source['member']}"
    if "video" in source:
        return f"{source['video']}@{source.get('time', 0):.3f}s"
    return json.dumps(source)
