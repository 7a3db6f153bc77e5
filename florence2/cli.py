"""Command line: ``florence2 predict``, ``florence2 train``, ``florence2 eval``, ``florence2 tasks``.

``florence2 predict IMAGE... --task OD [--task CAPTION] [--text T | --region x0,y0,x1,y1] [--model PATH]
[--json] [--draw OUT]`` prints results (one JSON object per image and line with ``--json``) and draws
them on request. Folders given as IMAGE are searched for image files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from florence2.errors import Florence2Error
from florence2.tasks import TASKS, get_task

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _expand_images(paths: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()))
        else:
            out.append(p)
    return out


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
    predictor = Florence2.from_pretrained(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize)
    draw_to = _draw_targets(args.draw, images, tasks) if args.draw else {}
    failures = 0
    progress = _progress(len(images), args.progress)
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
            if args.json:
                print(json.dumps(record, ensure_ascii=False), flush=True)
            else:
                print(f"{path} ({image.width}x{image.height})")
                for task, result in results.items():
                    print(f"  {task}: {json.dumps(result, ensure_ascii=False)}")
            for task in tasks:
                target = draw_to.get((index, task))
                if target is not None:
                    draw_result(image, results, task=task).save(target)
        progress.update(len(batch_paths))
    progress.close()
    return 1 if failures else 0


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, wanted: bool | None) -> Any:
    if wanted is False or (wanted is None and (total < 2 or not sys.stderr.isatty())):
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoProgress()
    return tqdm(total=total, unit="img", file=sys.stderr)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="florence2", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="run one or more tasks on images")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--task", action="append", type=_task, help="task token (repeatable; default <CAPTION>)")
    p.add_argument("--text", help="text input of grounding / referring / open-vocabulary tasks")
    p.add_argument("--region", type=_region, help="region input x0,y0,x1,y1 in pixels of the image")
    p.add_argument("--model", help="checkpoint folder (either public layout) or hub id; default: embedded model")
    p.add_argument("--json", action="store_true", help="print one JSON object per image and line")
    p.add_argument("--draw", help="write annotated images: a file (one image, one task) or a folder")
    p.add_argument("--num-beams", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--no-repeat-ngram-size", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--score-threshold", type=float, help="drop regions scoring below this (0..1)")
    p.add_argument("--nms-iou", type=float, help="per-label non-maximum suppression at this IoU")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--quantize", choices=["int8"], help="int8 linear layers (CPU): faster, slightly less exact")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when it is a terminal)",
    )
    p.set_defaults(func=cmd_predict)

    from florence2.eval.cli import add_eval_parser
    from florence2.train.cli import add_train_parser

    add_train_parser(sub)
    add_eval_parser(sub)

    from florence2.train.cli import add_finetune_parser

    add_finetune_parser(sub)  # florence2 finetune: datasets in common formats, freezing, LoRA

    from florence2.serve.cli import add_serve_parser  # FastAPI is imported only when the server runs

    add_serve_parser(sub)

    t = sub.add_parser("tasks", help="list the tasks and their prompts")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_tasks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Florence2Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
