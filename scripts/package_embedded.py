"""Copy a trained checkpoint into the package as the embedded default model, plus example images.

    python scripts/package_embedded.py runs/embedded/checkpoint-last

Weights are stored in float16 (they load as float32); the training state is left behind. The
generation config written beside them holds the decoding settings the README's figures were
measured with.
"""

from __future__ import annotations

import argparse
import json
import shutil

import torch

from florence2.data.synthetic import SyntheticWorld, WorldConfig
from florence2.pipeline import DEFAULT_MODEL_DIR, Florence2

ASSETS = DEFAULT_MODEL_DIR.parent
EXAMPLE_SEED = 20261127  # never used for training or evaluation
NUM_EXAMPLES = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0)
    parser.add_argument("--scene-size", type=int, default=128)
    args = parser.parse_args()
    predictor = Florence2.from_pretrained(args.checkpoint)
    if DEFAULT_MODEL_DIR.exists():
        shutil.rmtree(DEFAULT_MODEL_DIR)
    predictor.save_pretrained(DEFAULT_MODEL_DIR, dtype=torch.float16)
    gen_path = DEFAULT_MODEL_DIR / "generation_config.json"
    gen = json.loads(gen_path.read_text())
    gen.update(num_beams=args.num_beams, no_repeat_ngram_size=args.no_repeat_ngram_size)
    gen_path.write_text(json.dumps(gen, indent=2) + "\n")
    examples = ASSETS / "examples"
    shutil.rmtree(examples, ignore_errors=True)
    examples.mkdir(parents=True)
    world = SyntheticWorld(WorldConfig(image_size=args.scene_size), seed=EXAMPLE_SEED)
    records = []
    for index in range(NUM_EXAMPLES):
        image, record = world.scene(index)
        image.save(examples / record["image"])
        records.append(record)
    (examples / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    size = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    print(f"wrote {DEFAULT_MODEL_DIR} and {examples}: {size / 2**20:.1f} MiB in all")


if __name__ == "__main__":
    main()
