"""Write scenes of the synthetic world as a COCO detection dataset, to try ``florence2 finetune``.

    python scripts/synthetic_coco.py data/coco --num-images 60
    florence2 finetune --data coco:data/coco/instances.json:data/coco/images --out runs/mine ...

Writes ``OUT/images/*.png`` and ``OUT/instances.json`` (``bbox`` as COCO's [x, y, width, height],
``segmentation`` and ``area`` the shape's polygon; :func:`florence2.data.formats.write_coco`) from
``SyntheticWorld(WorldConfig(image_size), seed)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from florence2.data.formats import write_coco
from florence2.data.synthetic import CATEGORIES, SyntheticWorld, WorldConfig


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--num-images", type=int, default=60)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=123)
    args = p.parse_args()
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(WorldConfig(image_size=args.image_size), seed=args.seed)
    records = []
    for index in range(args.num_images):
        image, record = world.scene(index)
        name = f"{index:06d}.png"
        image.save(out / "images" / name)
        records.append({**record, "image": name})
    path = write_coco(records, out / "instances.json", CATEGORIES)
    boxes = sum(len(r["objects"]) for r in records)
    print(f"{path}: {len(records)} images, {boxes} boxes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
