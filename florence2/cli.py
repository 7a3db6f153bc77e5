"""Command line: ``florence2 COMMAND ...``; the commands are registered in :data:`COMMANDS`.

``florence2 predict IMAGE... --task OD [--task CAPTION] [--text T | --region x0,y0,x1,y1] [--model PATH]
[--json] [--draw OUT]`` prints results (one JSON object per image and line with ``--json``) and draws
them on request. Folders given as IMAGE are searched for image files.

Only the module of the command being run is imported, so ``florence2 tasks`` does not load torch,
and ``florence2 serve`` does not load the training code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from florence2.config import add_device_arguments
from florence2.errors import Florence2Error
from florence2.progress import progress_bar
from florence2.sources import IMAGE_SUFFIXES, find_images
from florence2.tasks import TASKS, get_task


@dataclass(frozen=True)
class Command:
    """A ``florence2`` subcommand: its one-line help, and the function that adds its parser.

    ``adder`` is ``"module:function"``; the module is imported only when the command runs (or when
    every parser is built, e.g. for tests)."""

    help: str
    adder: str

    def add_to(self, subparsers: Any) -> None:
        module, function = self.adder.split(":")
        getattr(importlib.import_module(module), function)(subparsers)


COMMANDS: dict[str, Command] = {
    "predict": Command("run one or more tasks on images", "florence2.cli:add_predict_parser"),
    "train": Command("train on the synthetic world", "florence2.train.cli:add_train_parser"),
    "eval": Command("evaluate on the paper's benchmarks or the synthetic world", "florence2.eval.cli:add_eval_parser"),
    "finetune": Command("fine-tune a checkpoint on your datasets", "florence2.train.cli:add_finetune_parser"),
    "serve": Command("HTTP API and web page", "florence2.serve.cli:add_serve_parser"),
    "label": Command("label images, archives and videos into a dataset", "florence2.label.cli:add_label_parser"),
    "dataset": Command("stats, search, export, captions of a dataset", "florence2.label.cli:add_dataset_parser"),
    "engine": Command("the data engine's loops: engine refine", "florence2.refine:add_engine_parser"),
    "export": Command("export a model for other runtimes", "florence2.export.cli:add_export_parser"),
    "tasks": Command("list the tasks and their prompts", "florence2.cli:add_tasks_parser"),
}


def _expand_images(paths: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(find_images(p) if p.is_dir() else [p])
    return out


# --- how ``florence2 predict`` prints a record: one writer per --format ---------------------------


def _write_text(record: dict[str, Any], out: TextIO) -> None:
    print(f"{record['image']} ({record['width']}x{record['height']})", file=out)
    for task, result in record["results"].items():
        print(f"  {task}: {json.dumps(result, ensure_ascii=False)}", file=out)
    out.flush()


def _write_json(record: dict[str, Any], out: TextIO) -> None:
    print(json.dumps(record, ensure_ascii=False), file=out, flush=True)


RECORD_WRITERS: dict[str, Callable[[dict[str, Any], TextIO], None]] = {
    "text": _write_text,  # human-readable, one block per image
    "json": _write_json,  # one JSON object per image and line (image, width, height, results)
}


def _region(text: str) -> list[float]:
    parts = [s for s in re.split(r"[,\s]+", text.strip()) if s]
    try:
        values = [float(s) for s in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"a region is four numbers x0,y0,x1,y1 in pixels, got {text!r}")
    return values


def _task(name: str) -> str:
    try:
        return get_task(name).token
    except Florence2Error as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _draw_targets(draw: str, images: list[Path], tasks: list[str]) -> dict[tuple[int, str], Path]:
    out = Path(draw)
    if len(images) == 1 and len(tasks) == 1 and out.suffix.lower() in IMAGE_SUFFIXES:
        out.parent.mkdir(parents=True, exist_ok=True)
        return {(0, tasks[0]): out}
    out.mkdir(parents=True, exist_ok=True)
    return {(i, t): out / f"{img.stem}.{t.strip('<>').lower()}.png" for i, img in enumerate(images) for t in tasks}


def cmd_predict(args: argparse.Namespace) -> int:
    from florence2.image import load_image
    from florence2.pipeline import Florence2
    from florence2.visualize import draw_result

    images = _expand_images(args.images)
    if not images:
        print("error: no images found", file=sys.stderr)
        return 2
    tasks = args.task or ["<CAPTION>"]
    decoding = {
        k: v
        for k, v in (
            ("num_beams", args.num_beams),
            ("max_new_tokens", args.max_new_tokens),
            ("no_repeat_ngram_size", args.no_repeat_ngram_size),
        )
        if v is not None
    }
    predictor = Florence2.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, quantize=args.quantize, backend=args.backend
    )
    draw_to = _draw_targets(args.draw, images, tasks) if args.draw else {}
    failures = 0
    write = RECORD_WRITERS["json" if args.json else args.format]
    progress = progress_bar(len(images), enabled=args.progress, unit="img")
    for start in range(0, len(images), args.batch_size):
        batch_paths = images[start : start + args.batch_size]
        loaded: list[tuple[int, Path, Any]] = []
        for offset, path in enumerate(batch_paths):
            try:
                loaded.append((start + offset, path, load_image(path)))
            except Florence2Error as e:
                failures += 1
                print(f"error: {e}", file=sys.stderr)
        if not loaded:
            progress.update(len(batch_paths))
            continue
        pil_images = [img for _, _, img in loaded]
        per_image = predictor.predict(
            pil_images,
            tasks,
            text=args.text,
            region=args.region,
            batch_size=args.batch_size,
            score_threshold=args.score_threshold,
            nms_iou=args.nms_iou,
            **decoding,
        )
        for (index, path, image), results in zip(loaded, per_image):
            record = {"image": str(path), "width": image.width, "height": image.height, "results": results}
            write(record, sys.stdout)
            for task in tasks:
                target = draw_to.get((index, task))
                if target is not None:
                    draw_result(image, results, task=task).save(target)
        progress.update(len(batch_paths))
    progress.close()
    return 1 if failures else 0


def cmd_tasks(args: argparse.Namespace) -> int:
    rows = [
        {"task": s.token, "input": s.input, "prompt": s.prompt, "result": s.result_type, "description": s.description}
        for s in TASKS.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["task"]) for r in rows)
    for r in rows:
        print(f"{r['task']:<{width}}  input={r['input']:<6}  {r['prompt']}")
    return 0


def add_predict_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help=COMMANDS["predict"].help)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--task", action="append", type=_task, help="task token (repeatable; default <CAPTION>)")
    p.add_argument("--text", help="text input of grounding / referring / open-vocabulary tasks")
    p.add_argument("--region", type=_region, help="region input x0,y0,x1,y1 in pixels of the image")
    p.add_argument("--model", help="checkpoint folder (either public layout) or hub id; default: embedded model")
    p.add_argument("--format", choices=sorted(RECORD_WRITERS), default="text", help="how results are printed")
    p.add_argument("--json", action="store_true", help="print one JSON object per image and line (--format json)")
    p.add_argument("--draw", help="write annotated images: a file (one image, one task) or a folder")
    p.add_argument("--num-beams", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--no-repeat-ngram-size", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--score-threshold", type=float, help="drop regions scoring below this (0..1)")
    p.add_argument("--nms-iou", type=float, help="per-label non-maximum suppression at this IoU")
    add_device_arguments(p)
    p.add_argument("--quantize", choices=["int8"], help="int8 linear layers (CPU): faster, slightly less exact")
    p.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="run the PyTorch model, or an ONNX export (florence2 export onnx) on ONNX Runtime",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when it is a terminal)",
    )
    p.set_defaults(func=cmd_predict)


def add_tasks_parser(sub: Any) -> None:
    t = sub.add_parser("tasks", help=COMMANDS["tasks"].help)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_tasks)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``florence2`` parser. Given the arguments, only the named command's parser is built (the
    others are listed by name and help); without them, every command's."""
    parser = argparse.ArgumentParser(
        prog="florence2", description="Florence-2: captions, detection, grounding, segmentation and OCR with one model."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = None if argv is None else next(iter(argv), None)
    for name, command in COMMANDS.items():
        if argv is None or name == wanted:
            command.add_to(sub)
        else:
            sub.add_parser(name, help=command.help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return args.func(args)
    except Florence2Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the output went to a pipe that closed (| head): not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes it at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
