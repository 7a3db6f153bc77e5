"""Teach the embedded model a shape it has never seen (arrows) from at most 300 images, on a CPU.

The embedded model was trained on the eight shapes of the default synthetic world; ``arrow`` is one of
``florence2.data.synthetic.EXTRA_SHAPES``, which a world draws only when ``WorldConfig.categories``
names it. This script

1. writes a training split: scenes of the nine-category world (128 px, 1-4 shapes, seed 1001), taken
   in order and kept so that half of them hold an arrow (``--train-images``, at most 300);
2. writes a held-out split of the same world with another seed (2002), scenes as they come;
3. evaluates the embedded model there with ``<OD>`` (greedy, the model's own decoding): AP50 of the
   arrows and mAP@0.5 of the eight old categories (pycocotools, with the predictor's box scores);
4. fine-tunes with ``florence2 finetune`` (the exact command is printed and saved), validating on 10%
   of the training images (``od_mAP50`` picks ``best/``), stopped at ``--time-limit`` minutes if not done;
5. evaluates ``checkpoint-last`` and ``best`` the same way and writes ``report.json``.

    python scripts/finetune_new_shape.py --out runs/new_shape            # about 15 minutes on a busy 2-core CPU

The recipe that meets the experiment's target (docs/finetuning.md, "Experiment"): the new name as
one token whose embedding starts from ``cross`` (the shape the model mistook arrows for), the
vision tower and encoder frozen, random crops, distillation from the starting model and jittered
decoder inputs::

    python scripts/finetune_new_shape.py --out runs/new_shape --lr 2e-4 \
        --extra "--freeze vision,encoder --crop 0.6 --distill 1 --add-words arrow=cross --loc-jitter 16"
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from florence2 import Florence2
from florence2.data.synthetic import ANNOTATIONS_FILE, CATEGORIES, SyntheticWorld, WorldConfig
from florence2.eval.metrics import coco_detection_map

NEW = "arrow"
OLD = CATEGORIES


def world_config() -> WorldConfig:
    return WorldConfig(image_size=128, categories=(*CATEGORIES, NEW))


def has_new(record: dict) -> bool:
    return any(o["category"] == NEW for o in record["objects"])


def write_scenes(folder: Path, seed: int, count: int, balanced: bool) -> list[dict]:
    """Scenes of ``seed`` in index order; ``balanced``: keep them so that half hold the new shape."""
    folder.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(world_config(), seed=seed)
    wanted = {True: (count + 1) // 2, False: count // 2} if balanced else None
    records, index = [], 0
    while len(records) < count:
        image, record = world.scene(index)
        index += 1
        if wanted is not None:
            kind = has_new(record)
            if wanted[kind] == 0:
                continue
            wanted[kind] -= 1
        record["image"] = f"{index - 1:06d}.png"
        image.save(folder / record["image"])
        records.append(record)
    with open(folder / ANNOTATIONS_FILE, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    info = {"seed": seed, "scenes_drawn": index, "kept": count, "balanced": balanced, "categories": [*OLD, NEW]}
    (folder / "world.json").write_text(json.dumps(info, indent=2) + "\n")
    return records


def only(records: list[dict], predictions: list[dict], categories: set[str]) -> tuple[list[dict], list[dict]]:
    """Records and predictions restricted to ``categories`` (COCO AP of a category depends on nothing
    else). Predictions keep their scores when the predictor gives them (else every box scores 1.0)."""
    gt = [{**r, "objects": [o for o in r["objects"] if o["category"] in categories]} for r in records]
    pred = []
    for p in predictions:
        keep = [i for i, label in enumerate(p["labels"]) if label in categories]
        pred.append({key: [p[key][i] for i in keep] for key in ("bboxes", "labels", "scores") if key in p})
    return gt, pred


def evaluate(checkpoint: str | None, records: list[dict], folder: Path) -> dict:
    predictor = Florence2.from_pretrained(checkpoint)
    start = time.perf_counter()
    answers = predictor.predict([folder / r["image"] for r in records], "<OD>", batch_size=16)
    predictions = [a["<OD>"] for a in answers]
    figures = {
        f"{NEW}_AP50": coco_detection_map(*only(records, predictions, {NEW}))["mAP50"],
        "old_mAP50": coco_detection_map(*only(records, predictions, set(OLD)))["mAP50"],
        "all_mAP50": coco_detection_map(records, predictions)["mAP50"],
        f"{NEW}_boxes_predicted": sum(p["labels"].count(NEW) for p in predictions),
        f"{NEW}_objects": sum(o["category"] == NEW for r in records for o in r["objects"]),
        "seconds": round(time.perf_counter() - start, 1),
    }
    return figures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/new_shape")
    p.add_argument("--train-images", type=int, default=300)
    p.add_argument("--held-out", type=int, default=200)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--tasks", default="OD", help="tasks joined by +, e.g. OD+REGION_TO_CATEGORY")
    p.add_argument("--task-weights", default="", help="e.g. OD=3,REGION_TO_CATEGORY=1")
    p.add_argument("--eval-every", type=int, default=100, help="validation (10%% of the training images) every N steps")
    p.add_argument(
        "--time-limit", type=float, default=12.0, help="minutes; fine-tuning stops there, keeping its checkpoints"
    )
    p.add_argument("--extra", default="", help="more florence2 finetune options, e.g. '--freeze vision'")
    args = p.parse_args()
    if args.train_images > 300:
        p.error("the experiment allows at most 300 training images")
    out = Path(args.out)
    train_dir, held_dir, run_dir = out / "train", out / "held_out", out / "run"
    write_scenes(train_dir, seed=1001, count=args.train_images, balanced=True)
    held = write_scenes(held_dir, seed=2002, count=args.held_out, balanced=False)
    report: dict = {"train_images": args.train_images, "held_out_images": args.held_out}
    report["before"] = evaluate(None, held, held_dir)
    print(f"before: {report['before']}", file=sys.stderr, flush=True)

    # 10% of the training images validate (od_mAP50 on them picks best/); the held-out split is only
    # looked at before and after
    command = [sys.executable, "-m", "florence2.cli", "finetune", "--out", str(run_dir)]
    command += ["--data", f"synthetic:{train_dir}@tasks={args.tasks}"]
    command += ["--task-weights", args.task_weights] if args.task_weights else []
    command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    command += ["--eval-fraction", "0.1", "--synthetic-eval", "--best-metric", "od_mAP50"]
    command += ["--eval-every", str(args.eval_every), "--save-every", str(args.eval_every)]
    command += ["--log-every", "10", "--no-progress", *shlex.split(args.extra)]
    report["command"] = shlex.join(["florence2", *command[3:]])
    print(report["command"], file=sys.stderr, flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command)
    try:
        process.wait(timeout=args.time_limit * 60)
        if process.returncode:
            raise subprocess.CalledProcessError(process.returncode, command)
    except subprocess.TimeoutExpired:
        process.terminate()  # the run keeps its last saved checkpoint and best/
        process.wait()
        report["stopped_by_time_limit"] = True
    report["finetune_seconds"] = round(time.perf_counter() - start, 1)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    report["steps_done"] = metrics[-1]["step"]
    report["validation"] = [
        {k: r[k] for k in ("step", "eval/loss", "eval/od_mAP50") if k in r} for r in metrics if "eval/loss" in r
    ]
    for name in ("checkpoint-last", "best"):
        if (run_dir / name / "config.json").is_file():
            report[f"after ({name})"] = evaluate(str(run_dir / name), held, held_dir)
            print(f"after ({name}): {report[f'after ({name})']}", file=sys.stderr, flush=True)
    if (run_dir / "best" / "best.json").is_file():
        report["best"] = json.loads((run_dir / "best" / "best.json").read_text())
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
