"""``florence2 eval``: the synthetic-world evaluation and the standard-benchmark runners.

    florence2 eval --num-images 200 --seed 777 --scene-size 128      # synthetic split (also: eval synthetic ...)
    florence2 eval --model runs/tiny/checkpoint-last --split data/val [--max-images 200] [--out report.json]
    florence2 eval coco-det  --annotations instances_val2017.json --images val2017 --model PATH --out DIR
    florence2 eval captions  --annotations captions_val2014.json --images val2014 --model PATH --out DIR
    florence2 eval refcoco   --refs 'refcoco/refs(unc).p' --instances refcoco/instances.json --images train2014 ...
    florence2 eval flickr30k --root flickr30k_entities --images flickr30k-images --model PATH --out DIR
    florence2 eval ocr       --annotations ocr.jsonl --images DIR --model PATH --out DIR
    florence2 eval export    --num-images 200 --seed 777 --scene-size 128 --out bench   # synthetic -> the formats

Without a subcommand, ``eval`` is the synthetic evaluation: ``--split`` is a folder written by
:func:`florence2.data.write_split`; ``--num-images`` generates one with ``--seed`` (pick a seed the
model was not trained on) and ``--scene-size``. ``--out`` writes the figures, the targets and the
settings as JSON; ``--predictions`` writes every answer as JSON lines.

The benchmark subcommands write ``predictions.jsonl``, ``summary.json`` and ``summary.md`` into
``--out`` and print the summary (see :mod:`florence2.eval.benchmarks`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from florence2.eval.export import export_all, export_commands
from florence2.eval.registry import BENCHMARKS, task_type
from florence2.eval.synthetic import DEFAULT_TASKS, TARGETS, TASK_EVALS, check_targets, evaluate_synthetic
from florence2.tasks import get_task

DEFAULT_EVAL_SEED = 777


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


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces ``args``: ``florence2 eval [subcommand]`` and every option whose
    value differs from its default, in the parser's order (``--progress`` left out: it changes no
    figure, and its default depends on the terminal)."""
    parser: argparse.ArgumentParser = args.eval_parser
    words = ["florence2", "eval", *([args.benchmark] if args.benchmark else [])]
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "progress"):
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        option = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        if isinstance(action, argparse.BooleanOptionalAction):
            words.append(option if value else "--no-" + option[2:])
        elif action.nargs == 0:  # store_true
            words.append(option)
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                words += [option, str(item)]
        elif isinstance(value, list):
            words += [option, *map(str, value)]
        else:
            words += [option, str(value)]
    return shlex.join(words)


# --------------------------------------------------------------------------------------------------
# Synthetic split
# --------------------------------------------------------------------------------------------------


def cmd_synthetic(args: argparse.Namespace) -> int:
    from florence2.data.synthetic import WorldConfig, read_split, write_split
    from florence2.eval.metrics import cider_available
    from florence2.pipeline import Florence2

    if args.split is None and args.num_images is None:
        args.eval_parser.error("one of the arguments --split --num-images is required")
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
            "command": command_line(args),
        }
        out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if args.check_targets and not all(reached.values()):
        return 1
    return 0


def _add_synthetic_options(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--model", help="checkpoint folder (either public layout) or hub id; default: embedded model")
    where = p.add_mutually_exclusive_group(required=required)
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
    p.add_argument(
        "--task",
        action="append",
        type=task_type(tuple(TASK_EVALS), "evaluated tasks"),
        help="task to evaluate (repeatable; default: the main six)",
    )
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("--predictions", help="write every query's prediction as JSON lines here")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-beams", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--check-targets", action="store_true", help="exit 1 when a target figure is missed")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty())


# --------------------------------------------------------------------------------------------------
# Standard benchmarks
# --------------------------------------------------------------------------------------------------


def _decoding(args: argparse.Namespace) -> dict[str, Any]:
    pairs = (
        ("num_beams", args.num_beams),
        ("max_new_tokens", args.max_new_tokens),
        ("score_threshold", args.score_threshold),
        ("nms_iou", args.nms_iou),
    )
    return {k: v for k, v in pairs if v is not None}


def cmd_benchmark(args: argparse.Namespace) -> int:
    from florence2.eval.benchmarks import format_summary
    from florence2.pipeline import Florence2

    benchmark = BENCHMARKS[args.benchmark]
    if benchmark.one_of and all(getattr(args, dest) is None for dest in benchmark.one_of):
        names = " ".join("--" + dest.replace("_", "-") for dest in benchmark.one_of)
        args.eval_parser.error(f"one of the arguments {names} is required")
    predictor = Florence2.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    summary = benchmark.run(
        predictor,
        out_dir=args.out,
        batch_size=args.batch_size,
        decoding=_decoding(args),
        progress=args.progress,
        model=args.model,
        command=command_line(args),
        **{benchmark.limit: args.max_samples},
        **{dest: getattr(args, dest) for dest in benchmark.dests},
    )
    print(format_summary(summary))
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint folder (either public layout) or hub id; default: embedded model")
    p.add_argument("--out", required=True, help="folder for predictions.jsonl, summary.json and summary.md")
    p.add_argument("--max-samples", type=int, help="evaluate only the first N samples (images or expressions)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--num-beams", type=int, help="default: the checkpoint's generation config")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--score-threshold", type=float, help="predict's score threshold (keep none for mAP)")
    p.add_argument("--nms-iou", type=float, help="predict's per-label NMS IoU")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty())


def _add_benchmark_parsers(sub: Any) -> None:
    for benchmark in BENCHMARKS.values():
        p = sub.add_parser(benchmark.name, help=benchmark.help, description=benchmark.description)
        for flags, kwargs in benchmark.options:
            p.add_argument(*flags, **kwargs)
        _add_run_options(p)
        p.set_defaults(func=cmd_benchmark, eval_parser=p)


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from florence2.data.synthetic import WorldConfig, write_split

    out = Path(args.out)
    split = Path(args.split) if args.split else out / "split"
    if args.split is None:
        write_split(split, args.num_images, seed=args.seed, config=WorldConfig(image_size=args.scene_size))
    paths = export_all(split, out)
    print(f"wrote the synthetic split {split} as benchmark files under {out}; evaluate with:")
    for words in export_commands(paths, out / "results").values():
        print("  " + shlex.join(words))
    return 0


def _add_export_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help=f"write a synthetic split as the files of the benchmarks {', '.join(BENCHMARKS)}",
        description="Export a synthetic split into the standard benchmark formats (see florence2.eval.export).",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--split", help="a folder written by write_split")
    where.add_argument("--num-images", type=int, help="generate a split of this many scenes into OUT/split")
    p.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED, help=f"world seed (default {DEFAULT_EVAL_SEED})")
    p.add_argument("--scene-size", type=int, default=128, help="scene side, pixels (default 128)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_export)


# --------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` (the synthetic evaluation, and the benchmark subcommands) to ``florence2``'s subparsers."""
    p = subparsers.add_parser(
        "eval",
        help=f"evaluate a model: the synthetic split, or the benchmarks {', '.join(BENCHMARKS)}",
        description=(
            "Without a subcommand: evaluate a model on a synthetic split and print the figures as a markdown "
            "table. Subcommands run the standard benchmarks on annotation files from disk."
        ),
    )
    _add_synthetic_options(p, required=False)
    p.set_defaults(func=cmd_synthetic, eval_parser=p, benchmark=None)
    sub = p.add_subparsers(dest="benchmark", metavar="{" + ",".join(["synthetic", *BENCHMARKS, "export"]) + "}")
    s = sub.add_parser("synthetic", help="the synthetic-split evaluation (the default without a subcommand)")
    _add_synthetic_options(s, required=True)
    s.set_defaults(func=cmd_synthetic, eval_parser=s)
    _add_benchmark_parsers(sub)
    _add_export_parser(sub)
    sub.choices["export"].set_defaults(eval_parser=sub.choices["export"])
    return p
