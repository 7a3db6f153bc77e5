"""Do tiles find the small objects of large images? Mosaics of synthetic scenes, labeled with and
without ``--tiles``, scored with pycocotools against their ground truth.

    python scripts/tiles_probe.py [--model FOLDER] [--images 100] [--grid 2] [--seed 777]
        [--tiles 2x2] [--out runs/tiles-probe]

Each image is a ``--grid`` x ``--grid`` mosaic of 128-pixel scenes of the synthetic world (so at the
embedded model's 128-pixel input every object is ``--grid`` times smaller than the model was trained
on); ``--grid 1`` gives the scenes themselves (objects as large as trained: what tiles cost there).
The images are labeled with ``--preset detect`` (the embedded model without ``--model``) once
plainly and once with ``--tiles``, and the ``<OD>`` boxes of each run are scored against the
mosaics' objects (mAP@0.5 and mAP@[.5:.95], pycocotools), with the labeling speed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from florence2.data.synthetic import WorldConfig, generate_mosaic
from florence2.eval.metrics import coco_detection_dicts, coco_evaluate
from florence2.label import DatasetStore, label

SCENE = 128


def make_mosaics(folder: Path, count: int, grid: int, seed: int) -> dict[str, dict]:
    """Write ``count`` mosaics; returns their ground truth by absolute path."""
    rng = np.random.default_rng(seed)
    truth = {}
    for k in range(count):
        image, objects = generate_mosaic(rng, grid, WorldConfig(image_size=SCENE))
        path = (folder / f"{k:05d}.png").absolute()
        image.save(path)
        truth[str(path)] = {"width": image.width, "height": image.height, "objects": objects}
    return truth


def score(dataset: Path, truth: dict[str, dict]) -> dict[str, float | None]:
    with DatasetStore(dataset) as store:
        found = {r["source"]["path"]: r["results"].get("<OD>", {}) for r in store.records()}
    paths = sorted(truth)
    gt, results = coco_detection_dicts([truth[p] for p in paths], [found.get(p, {}) for p in paths])
    return coco_evaluate(gt, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a checkpoint folder (default: the embedded model)")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--grid", type=int, default=2, help="scenes a side of each mosaic")
    parser.add_argument("--seed", type=int, default=777, help="world seed (not one trained on)")
    parser.add_argument("--tiles", default="2x2", help="the tiling to compare with plain labeling (or auto)")
    parser.add_argument("--out", help="keep the images and datasets here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        out = Path(args.out or temporary)
        (out / "images").mkdir(parents=True, exist_ok=True)
        truth = make_mosaics(out / "images", args.images, args.grid, args.seed)
        size = SCENE * args.grid
        print(f"{args.images} mosaics of {args.grid} x {args.grid} scenes ({size} px), seed {args.seed}")
        print("| labeling | mAP@0.5 | mAP@[.5:.95] | images/s |\n|---|---:|---:|---:|")
        for name, tiles in (("plain", None), (f"--tiles {args.tiles}", args.tiles)):
            dataset = out / f"dataset-{'plain' if tiles is None else tiles}"
            summary = label(out / "images", dataset, model=args.model, preset="detect", tiles=tiles)
            stats = score(dataset, truth)
            print(f"| {name} | {stats['AP50']:.4f} | {stats['AP']:.4f} | {summary.images_per_second:.2f} |")


if __name__ == "__main__":
    main()
