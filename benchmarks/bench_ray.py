"""``florence2 label --engine ray`` with 1 and 2 workers against the local engine, same images.

    .venv/bin/python benchmarks/bench_ray.py                  # 48 scenes, fld preset, embedded model
    .venv/bin/python benchmarks/bench_ray.py --images 96 --preset caption

Each arm labels the same synthetic scenes into a fresh dataset, in a fresh process (a fresh local
Ray for the ray arms). Reported per arm: the command's wall time (Ray's start included), the
engine's own seconds, and the steady rate: images between the first and the last committed
batch, over that time (start-up and the last batch's tail left out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

from florence2.data.synthetic import write_split  # noqa: E402
from florence2.label import DatasetStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_arm(name: str, scenes: Path, out: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "florence2.cli", "label", str(scenes), "--out", str(out), "--json"]
    command += ["--preset", args.preset, "--batch-size", str(args.batch_size), *extra]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    summary = json.loads(result.stdout)
    with DatasetStore(out) as store:
        times = sorted(r["labeled_at"] for r in store.records())
    # a batch's records are written in one transaction, within milliseconds of each other
    first_batch = [t for t in times if t - times[0] < 0.05]
    steady = None
    if times[-1] - first_batch[-1] > 0:
        steady = (len(times) - len(first_batch)) / (times[-1] - first_batch[-1])
    return {
        "arm": name,
        "images": summary["labeled"],
        "wall_s": round(wall, 1),
        "engine_s": round(summary["seconds"], 1),
        "images_per_s_wall": round(summary["labeled"] / wall, 3),
        "images_per_s_steady": round(steady, 3) if steady else None,
        "load_average": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--preset", default="fld")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    arms = [
        ("local engine (2 reading threads)", ["--workers", "2"]),
        ("ray, 1 worker", ["--engine", "ray", "--workers", "1"]),
        ("ray, 2 workers", ["--engine", "ray", "--workers", "2"]),
    ]
    with tempfile.TemporaryDirectory(prefix="florence2-bench-ray-") as work:
        scenes = Path(work) / "scenes"
        write_split(scenes, args.images, seed=91)
        rows = [run_arm(name, scenes, Path(work) / f"ds-{i}", args, extra) for i, (name, extra) in enumerate(arms)]
    machine = machine_info(torch.device("cpu"), torch.get_num_threads())
    print("\n".join(f"{k}: {v}" for k, v in machine.items()))
    print(f"preset {args.preset}, {args.images} scenes, batch {args.batch_size}, embedded model\n")
    print("| arm | images | wall s | engine s | img/s (wall) | img/s (steady) | load |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['arm']} | {r['images']} | {r['wall_s']} | {r['engine_s']} | {r['images_per_s_wall']} | "
            f"{r['images_per_s_steady']} | {r['load_average']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
