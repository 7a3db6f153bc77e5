"""``florence2 eval``: evaluate a model on a synthetic split and print the figures as a markdown table.

    florence2 eval --model runs/tiny/checkpoint-last --split data/val [--max-images 200] [--out report.json]
    florence2 eval --model runs/tiny/checkpoint-last --seed 777 --num-images 500   # a fresh split, in a temp dir

``--split`` is a folder written by :func:`florence2.data.write_split`; ``--num-images`` generates one
with ``--seed`` (pick a seed the model was not trained on) and ``--scene-size``. ``--out`` writes the
figures, the targets and the settings as JSON; ``--predictions`` writes every answer as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from florence2.errors import Florence2Error
from florence2.tasks import get_task

DEFAULT_EVAL_SEED = 777


def _task(name: str) -> str:
    from florence2.eval.synthetic import TASK_EVALS

    try:
        token = get_task(name).token
    except Florence2Error as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    if token not in TASK_EVALS:
        raise argparse.ArgumentTypeError(f"no evaluation for {token}; choose from {', '.join(TASK_EVALS)}")
    return token


def _format(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):  # bools too
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_report(report: Mapping[str, Any], targets: Mapping[str, float] | None = None) -> str:
    """The figures as a markdown table, with the target and whether it is reached where there is one."""
    from florence2.eval.synthetic import TARGETS, check_targets

    targets = TARGETS if targets is None else targets
    reached = check_targets(report, targets)
    rows = ["| figure | value | target |", "|---|---:|---|"]
    for key, value in report.items():
        target = ""
        if key in targets:
            verdict = {True: "reached", False: "MISSED", None: "not measured"}[reached[key]]
            target = f">= {targets[key]:g} ({verdict})"
        rows.append(f"| {key} | {_format(value)} | {target} |")
    return "\n".join(rows)


def cmd_eval(args: argparse.Namespace) -> int:
    from florence2.data.synthetic import WorldConfig, read_split, write_split
    from florence2.eval.metrics import cider_available
    from florence2.eval.synthetic import DEFAULT_TASKS, TARGETS, check_targets, evaluate_synthetic
    from florence2.pipeline import Florence2

    decoding = {
        k: v for k, v in (("num_beams", args.num_beams), ("max_new_tokens", args.max_new_tokens)) if v is not None
    }
    tasks = args.task or list(DEFAULT_TASKS)
    predictor = Florence2.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    with tempfile.TemporaryDirectory(prefix="florence2-eval-") as tmp:
        if args.split is not None:
            split_dir = Path(args.split)
            split_info: Any = str(split_dir)
        else:
            split_dir = Path(tmp)
            config = WorldConfig(image_size=args.scene_size)
            count = args.num_images if args.max_images is None else min(args.num_images, args.max_images)
            write_split(split_dir, count, seed=args.seed, config=config, progress=args.progress)
            split_info = {"seed": args.seed, "num_images": count, "scene_size": args.scene_size}
        try:
            records = read_split(split_dir)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        report = evaluate_synthetic(
            predictor,
            records,
            split_dir,
            tasks=tasks,
            batch_size=args.batch_size,
            max_images=args.max_images,
            progress=args.progress,
            decoding=decoding,
            predictions_path=args.predictions,
        )
    print(format_report(report))
    captions = any(get_task(t).token.endswith("CAPTION>") for t in tasks)
    if captions and not cider_available():
        print("\nCIDEr-D not reported: pycocoevalcap is not installed (pip install 'florence2[eval]').")
    reached = check_targets(report)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "model": str(args.model) if args.model else "embedded",
            "split": split_info,
            "tasks": tasks,
            "decoding": decoding,
            "figures": report,
            "targets": {k: {"target": TARGETS[k], "reached": reached[k]} for k in TARGETS},
        }
        out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if args.check_targets and not all(reached.values()):
        return 1
    return 0


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` to the ``florence2`` command's subparsers."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model on a synthetic split (mAP, mIoU, OCR, grounding, captions)",
        description="Evaluate a model on a synthetic split and print the figures as a markdown table.",
    )
    p.add_argument("--model", help="checkpoint folder (either public layout) or hub id; default: embedded model")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--split", help="a folder written by write_split (annotations.jsonl + images)")
    where.add_argument("--num-images", type=int, help="generate a split of this many scenes in a temp dir")
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_EVAL_SEED,
        help=f"world seed of a generated split (default {DEFAULT_EVAL_SEED}); pick one not trained on",
    )
    p.add_argument("--scene-size", type=int, default=128, help="scene side of a generated split, pixels (default 128)")
    p.add_argument("--max-images", type=int, help="evaluate only the first N images")
    p.add_argument("--task", action="append", type=_task, help="task to evaluate (repeatable; default: the main six)")
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("--predictions", help="write every query's prediction as JSON lines here")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-beams", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--check-targets", action="store_true", help="exit 1 when a target figure is missed")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty())
    p.set_defaults(func=cmd_eval)
    return p
