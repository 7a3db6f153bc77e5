"""Run every Florence-2 task on example images; write results.json and one annotated image per task.

    python examples/demo.py [--model PATH] [--out out/demo]

Without --model the embedded model (trained on the synthetic world, shipped with the package) runs
on the example images shipped beside it. An installation without the embedded model falls back to a
tiny random-weight checkpoint built here, so the whole path (loading, prompts, generation, parsing,
drawing) still runs; its answers are then noise, and the script says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from florence2 import Florence2, Florence2Processor, ImageProcessor, draw_result
from florence2.config import Florence2Config, TextConfig, VisionConfig
from florence2.data.synthetic import SyntheticWorld, WorldConfig, read_split
from florence2.errors import CheckpointError
from florence2.model.florence2 import Florence2Model
from florence2.pipeline import DEFAULT_MODEL_DIR
from florence2.tasks import TASKS
from florence2.tokenizer import train_bpe_tokenizer

EXAMPLE_SEED = 20261127


def example_images(folder: Path, count: int = 3) -> list[tuple[Path, dict]]:
    """The shipped examples with their annotations, or freshly generated ones."""
    shipped = DEFAULT_MODEL_DIR.parent / "examples"
    if (shipped / "annotations.jsonl").is_file():
        records = read_split(shipped)
        return [(shipped / r["image"], r) for r in records]
    folder.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(WorldConfig(image_size=256), seed=EXAMPLE_SEED)
    out = []
    for i in range(count):
        image, record = world.scene(i)
        path = folder / f"example_{i}.png"
        image.save(path)
        out.append((path, record))
    return out


def random_checkpoint(folder: Path) -> Path:
    """A tiny random-weight Florence-2 (same architecture family) with a tokenizer trained on prompts."""
    corpus = [spec.prompt for spec in TASKS.values()]
    world = SyntheticWorld(WorldConfig(image_size=128), seed=1)
    corpus += [world.scene(i)[1]["captions"]["more_detailed"] for i in range(50)]
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=600)
    vision = VisionConfig(
        embed_dims=(32, 64, 96, 128),
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 3, 4),
        num_groups=(1, 2, 3, 4),
        window_size=4,
        drop_path_rate=0.0,
    )
    text = TextConfig(
        vocab_size=tokenizer.vocab_size,
        d_model=128,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=256,
        decoder_ffn_dim=256,
        max_position_embeddings=512,
    )
    model = Florence2Model(Florence2Config(vision=vision, text=text)).eval()
    processor = Florence2Processor(tokenizer, ImageProcessor(size=(128, 128)), max_positions=512)
    Florence2(model, processor).save_pretrained(folder)
    return folder


def task_inputs(record: dict) -> dict[str, dict]:
    """Inputs for the tasks that take one, from the example's own annotation."""
    obj = record["objects"][0]
    phrase = record["phrases"][0]["phrase"] if record.get("phrases") else obj["brief"]
    return {"text": {"text": phrase}, "region": {"region": obj["bbox"]}, "none": {}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint folder (default: the embedded model)")
    parser.add_argument("--out", default="out/demo")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args(argv)
    out = Path(args.out)
    examples = example_images(out / "images")
    try:
        predictor = Florence2.from_pretrained(args.model)
        source = args.model or "embedded model"
    except CheckpointError as e:
        if args.model:
            raise
        print(f"note: {e}\nnote: using a tiny RANDOM-WEIGHT checkpoint instead; its answers are noise", file=sys.stderr)
        predictor = Florence2.from_pretrained(random_checkpoint(out / "random-tiny-checkpoint"))
        source = "random-weight tiny checkpoint"
    report = {"model": source, "images": []}
    for path, record in examples:
        inputs = task_inputs(record)
        entry = {"image": str(path), "results": {}, "seconds": {}}
        for token, spec in TASKS.items():
            start = time.perf_counter()
            result = predictor.predict(path, token, max_new_tokens=args.max_new_tokens, **inputs[spec.input])
            entry["seconds"][token] = round(time.perf_counter() - start, 3)
            entry["results"].update(result)
            if spec.result_type != "pure_text":
                drawn = out / "drawn" / f"{path.stem}.{token.strip('<>').lower()}.png"
                drawn.parent.mkdir(parents=True, exist_ok=True)
                draw_result(path, result, task=token).save(drawn)
            print(f"{path.name} {token}: {json.dumps(result[token], ensure_ascii=False)[:100]}")
        report["images"].append(entry)
    (out / "results.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out / 'results.json'} and annotated images in {out / 'drawn'} ({source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
