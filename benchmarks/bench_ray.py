"""``florence2 label --engine ray`` with 1 and 2 workers against the local engine, same images.

    .venv/bin/python benchmarks/bench_ray.py                  # 48 scenes, fld preset, embedded model
    .venv/bin/python benchmarks/bench_ray.py --images 96 --preset caption

Each arm labels the same synthetic scenes into a fresh dataset, in a fresh process (a fresh local
Ray for the ray arms). Reported per arm: the command's wall time (Ray's start included), the
engine's own seconds, and the steady rate: images between the first and the last committed
batch, over that time (start-up and the last batch's tail left out).

Two figures for sizing a cluster follow: the local engine with ``--compare-preset`` (default
``caption``) on the same images, giving the cost of the measured preset relative to it; and the
rate at which the driver's dataset store commits the first arm's records (copied under fresh
image ids, a transaction per batch, as the ray driver writes them), its upper bound on images/s
however many workers label.
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
from florence2.label.store import Outcome  # noqa: E402

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


def store_rate(dataset: Path, out: Path, batch_size: int, images: int) -> dict:
    """Records per second the store commits: ``dataset``'s records copied under fresh ids until
    ``images`` are written, ``batch_size`` per transaction (records, regions, texts indexed)."""
    with DatasetStore(dataset) as store:
        records = list(store.records())
    bytes_per_record = sum(len(json.dumps(r["results"])) for r in records) / len(records)
    with DatasetStore(out, create=True) as store:
        run, _ = store.run_for({"bench": "store"})
        started = time.perf_counter()
        for first in range(0, images, batch_size):
            batch = []
            for i in range(first, min(first + batch_size, images)):
                r = records[i % len(records)]
                key = f"copy-{i}/{r['id']}"
                batch.append(
                    Outcome(key, {"key": key}, None, f"{i:08d}{r['id'][8:]}", r["width"], r["height"], r["results"])
                )
            store.commit(run, batch, {})
        seconds = time.perf_counter() - started
    return {
        "images": images,
        "seconds": round(seconds, 2),
        "per_s": round(images / seconds, 1),
        "json_bytes": round(bytes_per_record),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--preset", default="fld")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--compare-preset", default="caption", help="the preset the measured one is compared with")
    parser.add_argument("--store-images", type=int, default=5000, help="records committed for the store's rate")
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
        compare = run_arm(
            f"local engine, preset {args.compare_preset}",
            scenes,
            Path(work) / "ds-compare",
            argparse.Namespace(**{**vars(args), "preset": args.compare_preset}),
            arms[0][1],
        )
        store = store_rate(Path(work) / "ds-0", Path(work) / "ds-store", args.batch_size, args.store_images)
    machine = machine_info(torch.device("cpu"), torch.get_num_threads())
    print("\n".join(f"{k}: {v}" for k, v in machine.items()))
    print(f"preset {args.preset}, {args.images} scenes, batch {args.batch_size}, embedded model\n")
    print("| arm | images | wall s | engine s | img/s (wall) | img/s (steady) | load |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in [*rows, compare]:
        print(
            f"| {r['arm']} | {r['images']} | {r['wall_s']} | {r['engine_s']} | {r['images_per_s_wall']} | "
            f"{r['images_per_s_steady']} | {r['load_average']} |"
        )
    print(
        f"\npreset {args.preset} costs {rows[0]['engine_s'] / compare['engine_s']:.2f}x preset "
        f"{args.compare_preset} per image (local engine seconds)"
    )
    print(
        f"dataset store: {store['images']} {args.preset} records ({store['json_bytes']} bytes of results JSON "
        f"each) committed in {store['seconds']} s, batches of {args.batch_size}: {store['per_s']} images/s"
    )
    if args.json:
        figures = {"machine": machine, "rows": rows, "compare": compare, "store": store}
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
