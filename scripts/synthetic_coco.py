"""Write scenes of the synthetic world as a COCO detection dataset, to try ``florence2 finetune``.

    python scripts/synthetic_coco.py data/coco --num-images 60
    florence2 finetune --data coco:data/coco/instances.json:data/coco/images --out runs/mine ...

Writes ``OUT/images/*.png`` and ``OUT/instances.json`` (``bbox`` as COCO's [x, y, width, height],
``segmentation`` the shape's polygon) from ``SyntheticWorld(WorldConfig(image_size), seed)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    category_ids = {name: i + 1 for i, name in enumerate(CATEGORIES)}
    images, annotations = [], []
    for index in range(args.num_images):
        image, record = world.scene(index)
        name = f"{index:06d}.png"
        image.save(out / "images" / name)
        images.append({"id": index + 1, "file_name": name, "width": record["width"], "height": record["height"]})
        for obj in record["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": category_ids[obj["category"]],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "segmentation": [obj["polygon"]],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i, "name": name} for name, i in category_ids.items()]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (out / "instances.json").write_text(json.dumps(data) + "\n")
    print(f"{out / 'instances.json'}: {len(images)} images, {len(annotations)} boxes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
