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

from florence2.errors import Florence2Error
from florence2.tasks import get_task

DEFAULT_EVAL_SEED = 777
BENCHMARKS = ("coco-det", "captions", "refcoco", "flickr30k", "ocr")


def _task(name: str) -> str:
    from florence2.eval.synthetic import TASK_EVALS

    try:
        token = get_task(name).token
    except Florence2Error as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    if token not in TASK_EVALS:
        raise argparse.ArgumentTypeError(f"no evaluation for {token}; choose from {', '.join(TASK_EVALS)}")
    return token


def _token(choices: tuple[str, ...]) -> Any:
    def parse(name: str) -> str:
        try:
            token = get_task(name).token
        except Florence2Error as e:
            raise argparse.ArgumentTypeError(str(e)) from e
        if token not in choices:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return token

    return parse


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
    from florence2.eval.synthetic import DEFAULT_TASKS, TARGETS, check_targets, evaluate_synthetic
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
    from florence2.eval import benchmarks
    from florence2.pipeline import Florence2

    predictor = Florence2.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    common = {
        "batch_size": args.batch_size,
        "decoding": _decoding(args),
        "progress": args.progress,
        "model": args.model,
        "command": command_line(args),
    }
    if args.benchmark == "coco-det":
        summary = benchmarks.evaluate_coco_detection(
            predictor,
            args.annotations,
            args.images,
            args.out,
            unit_scores=args.unit_scores,
            max_images=args.max_samples,
            **common,
        )
    elif args.benchmark == "captions":
        summary = benchmarks.evaluate_captions(
            predictor,
            args.annotations,
            args.images,
            args.out,
            task=args.task,
            split=args.split,
            java=args.java,
            max_images=args.max_samples,
            **common,
        )
    elif args.benchmark == "refcoco":
        summary = benchmarks.evaluate_refcoco(
            predictor,
            args.refs,
            args.instances,
            args.images,
            args.out,
            split=args.split,
            tasks=args.tasks,
            rec_task=args.rec_task,
            sentence_key=args.sentence,
            dataset=args.dataset,
            max_samples=args.max_samples,
            **common,
        )
    elif args.benchmark == "flickr30k":
        summary = benchmarks.evaluate_flickr30k(
            predictor,
            args.root,
            args.images,
            args.out,
            split=args.split,
            protocol=args.protocol,
            max_samples=args.max_samples,
            **common,
        )
    else:
        summary = benchmarks.evaluate_ocr(
            predictor, args.annotations, args.images, args.out, max_images=args.max_samples, **common
        )
    print(benchmarks.format_summary(summary))
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
    from florence2.eval.benchmarks import REC_TASKS

    p = sub.add_parser(
        "coco-det",
        help="COCO detection mAP of <OD> (instances_*.json + image folder)",
        description="COCO box AP/AP50/AP75 of <OD> with pycocotools on a COCO detection file.",
    )
    p.add_argument("--annotations", required=True, help="COCO instances file, e.g. instances_val2017.json")
    p.add_argument("--images", required=True, help="the image folder, e.g. val2017/")
    p.add_argument("--unit-scores", action="store_true", help="rank every box 1.0 (ignore the model's scores)")
    _add_run_options(p)

    p = sub.add_parser(
        "captions",
        help="CIDEr, BLEU-4, METEOR, ROUGE-L of a caption task (COCO / NoCaps / TextCaps / Karpathy files)",
        description="coco-caption scores (pycocoevalcap) of a caption task. METEOR and the PTB tokenizer need Java.",
    )
    p.add_argument("--annotations", required=True, help="captions_*.json, Karpathy dataset_*.json or TextCaps json")
    p.add_argument("--images", required=True, help="the image folder")
    p.add_argument("--split", help="Karpathy split to evaluate, e.g. test")
    captions = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
    p.add_argument("--task", type=_token(captions), default="<CAPTION>", help="caption task (default CAPTION)")
    p.add_argument(
        "--java",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="PTB tokenizer and METEOR through Java (default: when java works)",
    )
    _add_run_options(p)

    p = sub.add_parser(
        "refcoco",
        help="RefCOCO/+/g: REC accuracy@0.5 and RES mIoU/oIoU",
        description="Referring expression comprehension and segmentation on RefCOCO, RefCOCO+ or RefCOCOg.",
    )
    p.add_argument("--refs", required=True, help="refs(unc).p / refs(umd).p / refs(google).p, or the refs as JSON")
    p.add_argument("--instances", required=True, help="the dataset's instances.json")
    p.add_argument("--images", required=True, help="COCO train2014/")
    p.add_argument("--split", default="val", help="val, testA, testB, test (default val)")
    p.add_argument("--tasks", nargs="+", choices=["rec", "res"], default=["rec", "res"])
    p.add_argument(
        "--rec-task",
        type=_token(REC_TASKS),
        default=REC_TASKS[0],
        help="task answering REC (default CAPTION_TO_PHRASE_GROUNDING; or OPEN_VOCABULARY_DETECTION)",
    )
    p.add_argument(
        "--sentence",
        choices=["sent", "raw"],
        default="sent",
        help="expression text: the distributed lower-cased 'sent' (default) or the 'raw' one",
    )
    p.add_argument("--dataset", help="name for the summary (default: the refs file's folder)")
    _add_run_options(p)

    p = sub.add_parser(
        "flickr30k",
        help="Flickr30k Entities phrase grounding recall@1",
        description="Phrase grounding recall@1 on Flickr30k Entities (Annotations/, Sentences/, <split>.txt).",
    )
    p.add_argument("--root", required=True, help="folder with Annotations/, Sentences/ and <split>.txt")
    p.add_argument("--images", required=True, help="flickr30k-images/")
    p.add_argument("--split", default="test", help="train, val or test (default test)")
    p.add_argument("--protocol", choices=["any", "merged"], default="any", help="any-box (default) or merged-box")
    _add_run_options(p)

    p = sub.add_parser(
        "ocr",
        help="OCR exact match, CER, WER of <OCR>",
        description="<OCR> exact match, CER and WER on JSON lines {image, text} or images with .txt files.",
    )
    p.add_argument("--annotations", help='JSON lines {"image": path, "text": transcription}')
    p.add_argument("--images", help="image folder (paths are relative to it; alone: images with same-name .txt)")
    _add_run_options(p)


def cmd_ocr_check(args: argparse.Namespace) -> int:
    if args.annotations is None and args.images is None:
        args.eval_parser.error("one of the arguments --annotations --images is required")
    return cmd_benchmark(args)


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def export_commands(paths: Mapping[str, Path], results: Path) -> dict[str, list[str]]:
    """The ``florence2 eval`` command of each benchmark on the files :func:`export_all` wrote."""

    def command(name: str, *inputs: str) -> list[str]:
        return ["florence2", "eval", name, *inputs, "--images", str(paths["images"]), "--out", str(results / name)]

    return {
        "coco-det": command("coco-det", "--annotations", str(paths["instances"])),
        "captions": command("captions", "--annotations", str(paths["captions"])),
        "refcoco": command("refcoco", "--refs", str(paths["refs"]), "--instances", str(paths["refcoco_instances"])),
        "flickr30k": command("flickr30k", "--root", str(paths["flickr30k"])),
        "ocr": command("ocr", "--annotations", str(paths["ocr"])),
    }


def cmd_export(args: argparse.Namespace) -> int:
    from florence2.data.synthetic import WorldConfig, write_split
    from florence2.eval.export import export_all

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
        help="write a synthetic split as COCO, caption, RefCOCO, Flickr30k and OCR benchmark files",
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
        help="evaluate a model: the synthetic split, or COCO / captions / RefCOCO / Flickr30k / OCR benchmarks",
        description=(
            "Without a subcommand: evaluate a model on a synthetic split and print the figures as a markdown "
            "table. Subcommands run the standard benchmarks on annotation files from disk."
        ),
    )
    _add_synthetic_options(p, required=False)
    p.set_defaults(func=cmd_synthetic, eval_parser=p, benchmark=None)
    sub = p.add_subparsers(dest="benchmark", metavar="{synthetic,coco-det,captions,refcoco,flickr30k,ocr,export}")
    s = sub.add_parser("synthetic", help="the synthetic-split evaluation (the default without a subcommand)")
    _add_synthetic_options(s, required=True)
    s.set_defaults(func=cmd_synthetic, eval_parser=s)
    _add_benchmark_parsers(sub)
    for name in BENCHMARKS:
        parser = sub.choices[name]
        parser.set_defaults(func=cmd_ocr_check if name == "ocr" else cmd_benchmark, eval_parser=parser)
    _add_export_parser(sub)
    sub.choices["export"].set_defaults(eval_parser=sub.choices["export"])
    return p
