"""Does a young checkpoint use the image yet? Box IoU on one-shape scenes, greedy `<OD>`.

    python scripts/localisation_probe.py CHECKPOINT [--num-images 100] [--seed 777]
        [--region-to-category | --region-to-description]

Prints the mean IoU of the first predicted box with the scene's one shape, the share at IoU >= 0.5,
the share with the right category, and how many distinct boxes the model gave (1 for a model that
answers the same box whatever the image). With ``--region-to-category`` it asks
`<REGION_TO_CATEGORY>` with the true box instead and prints how many answers name the right
category and the most common answers (a model that ignores the image gives one answer for all).
With ``--region-to-description`` it asks `<REGION_TO_DESCRIPTION>` with the true box (answers such as
"large pink triangle") and prints how many answers hold the shape's colour, category and size words.

The `--loc-sigma` comparison in the README ran it on two 500-step OD-only runs that differ only in
that flag:

    florence2 train --out runs/probe-s12 --steps 500 --batch-size 32 --lr 4e-4 --warmup 100 \\
        --vocab-size 600 --seed 0 --tasks OD=1 --max-objects 1 --save-every 0 --loc-sigma 12
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter

import torch

from florence2 import Florence2
from florence2.data.synthetic import SyntheticWorld, WorldConfig
from florence2.scoring import box_iou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=777, help="world seed (not one trained on)")
    parser.add_argument("--scene-size", type=int, default=128)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--region-to-category", action="store_true", help="name the shape in its true box")
    mode.add_argument("--region-to-description", action="store_true", help="describe the shape in its true box")
    args = parser.parse_args()
    model = Florence2.from_pretrained(args.checkpoint)
    world = SyntheticWorld(WorldConfig(image_size=args.scene_size, min_objects=1, max_objects=1), seed=args.seed)
    images, records = zip(*(world.scene(i) for i in range(args.num_images)))
    if args.region_to_category:
        name_the_shape(model, list(images), records, args.checkpoint)
        return
    if args.region_to_description:
        describe_the_shape(model, list(images), records, args.checkpoint)
        return
    results = model.predict(list(images), "<OD>", num_beams=1, no_repeat_ngram_size=0)
    ious, right, boxes = [], 0, set()
    for result, record in zip(results, records):
        od, truth = result["<OD>"], record["objects"][0]
        if not od["bboxes"]:
            ious.append(0.0)
            continue
        box = od["bboxes"][0]
        boxes.add(tuple(round(v) for v in box))
        ious.append(float(box_iou(torch.tensor([box]), torch.tensor([truth["bbox"]]))[0, 0]))
        right += od["labels"][0] == truth["category"]
    n = len(ious)
    print(
        f"{args.checkpoint}: mean IoU {statistics.mean(ious):.3f}, IoU >= 0.5 {sum(i >= 0.5 for i in ious) / n:.2f}, "
        f"right category {right / n:.2f}, distinct boxes {len(boxes)} ({n} images)"
    )


def ask_with_the_true_box(model: Florence2, images: list, records: tuple, task: str) -> list[str]:
    boxes = [record["objects"][0]["bbox"] for record in records]
    results = model.predict(images, task, region=boxes, num_beams=1, no_repeat_ngram_size=0)
    return [str(result[task]).strip() for result in results]


def name_the_shape(model: Florence2, images: list, records: tuple, name: str) -> None:
    answers = ask_with_the_true_box(model, images, records, "<REGION_TO_CATEGORY>")
    right = sum(answer == record["objects"][0]["category"] for answer, record in zip(answers, records))
    common = ", ".join(f"{a} {n}" for a, n in Counter(answers).most_common(3))
    print(f"{name}: right category {right}/{len(answers)}; most common answers: {common}")


def describe_the_shape(model: Florence2, images: list, records: tuple, name: str) -> None:
    answers = [a.lower() for a in ask_with_the_true_box(model, images, records, "<REGION_TO_DESCRIPTION>")]
    # substrings: "medium" is written "medium-sized"
    counts = {
        key: sum(record["objects"][0][key] in answer for answer, record in zip(answers, records))
        for key in ("color", "category", "size")
    }
    common = ", ".join(f"{a} {n}" for a, n in Counter(answers).most_common(3))
    n = len(answers)
    print(
        f"{name}: right colour {counts['color']}/{n}, category {counts['category']}/{n}, size {counts['size']}/{n}; "
        f"most common answers: {common}"
    )


if __name__ == "__main__":
    main()
