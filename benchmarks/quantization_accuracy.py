"""The accuracy cost of int8 quantization, on the embedded model's held-out synthetic scenes.

    python benchmarks/quantization_accuracy.py [--model PATH] [--num-images 100] [--seed 777]

Loads the model twice (fp32, and ``quantize="int8"``), runs the same scenes through both and
reports: cosine similarity of the image features (mean and worst image), generated-token agreement
per task (the share of fp32 tokens that int8 reproduces at the same position; sequences of
different lengths count the missing positions as disagreements), the share of identical answers,
and detection mAP@0.5 of each (pycocotools, real scores). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from florence2 import Florence2
from florence2.data.synthetic import WorldConfig, read_split, write_split
from florence2.eval.metrics import coco_detection_map
from florence2.generation import search
from florence2.image import load_image

TASKS = ("<OD>", "<CAPTION>", "<OCR>")


def generated_ids(f2: Florence2, images: list, task: str, features: torch.Tensor) -> list[list[int]]:
    sizes = [image.size for image in images]
    prompts = [f2.processor.build_prompt(task, None, None, size) for size in sizes]
    input_ids, mask = f2.processor.tokenize(prompts, f2.num_image_tokens)
    memory, memory_mask = f2.model.encode(features, input_ids, mask)
    out = search(f2.model, memory, memory_mask, f2.decoding_options())
    rows = []
    for row in out.sequences.tolist():
        end = (
            row.index(f2.model.config.text.eos_token_id, 2) + 1
            if f2.model.config.text.eos_token_id in row[2:]
            else None
        )
        rows.append(row[:end])
    return rows


def agreement(reference: list[list[int]], other: list[list[int]]) -> tuple[float, float]:
    same = total = exact = 0
    for a, b in zip(reference, other):
        same += sum(x == y for x, y in zip(a, b))
        total += max(len(a), len(b))
        exact += a == b
    return same / max(total, 1), exact / max(len(reference), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint folder; default: the embedded model")
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--scene-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=25)
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="f2-int8-"))
    write_split(folder, args.num_images, seed=args.seed, config=WorldConfig(image_size=args.scene_size))
    records = read_split(folder)
    images = [load_image(folder / r["image"]) for r in records]
    fp32 = Florence2.from_pretrained(args.model)
    int8 = Florence2.from_pretrained(args.model, quantize="int8")

    cosines: list[torch.Tensor] = []
    ids: dict[str, dict[str, list]] = {"fp32": {t: [] for t in TASKS}, "int8": {t: [] for t in TASKS}}
    seconds = {"fp32": 0.0, "int8": 0.0}
    with torch.inference_mode():
        for start in range(0, len(images), args.batch_size):
            chunk = images[start : start + args.batch_size]
            pixel_values, _ = fp32.processor.image_processor.preprocess(chunk)
            features = {}
            for name, f2 in (("fp32", fp32), ("int8", int8)):
                began = time.perf_counter()
                features[name] = f2.model.encode_image(pixel_values)
                for task in TASKS:
                    ids[name][task] += generated_ids(f2, chunk, task, features[name])
                seconds[name] += time.perf_counter() - began
            cosines.append(
                torch.nn.functional.cosine_similarity(features["fp32"].flatten(1), features["int8"].flatten(1))
            )
    cosine = torch.cat(cosines)

    maps = {}
    for name, f2 in (("fp32", fp32), ("int8", int8)):
        results = f2.predict(images, "<OD>", batch_size=args.batch_size)
        maps[name] = coco_detection_map(records, [r["<OD>"] for r in results])["mAP50"]

    lines = [
        f"int8 vs fp32 on {len(images)} held-out synthetic scenes (seed {args.seed}, {args.scene_size} px), "
        f"model: {args.model or 'embedded'}",
        "",
        "| measure | value |",
        "|---|---|",
        f"| image features cosine, mean / worst image | {cosine.mean():.5f} / {cosine.min():.5f} |",
    ]
    for task in TASKS:
        tokens, exact = agreement(ids["fp32"][task], ids["int8"][task])
        lines.append(f"| {task} token agreement / identical answers | {tokens:.3f} / {exact:.3f} |")
    lines.append(f"| <OD> mAP@0.5 fp32 / int8 | {maps['fp32']:.3f} / {maps['int8']:.3f} |")
    lines.append(
        f"| encode + {len(TASKS)} tasks, seconds fp32 / int8 | {seconds['fp32']:.2f} / {seconds['int8']:.2f} |"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
