"""``florence2 label --preset fld`` against the loop a user writes, on the same images, in one run.

    .venv/bin/python benchmarks/bench_label.py                       # embedded model and base size
    .venv/bin/python benchmarks/bench_label.py --size embedded --images 64 --rounds 3

The naive loop opens each image and calls ``Florence2.predict`` once per task of the FLD record
(three captions, ``<OD>``, ``<DENSE_REGION_CAPTION>``, ``<OCR_WITH_REGION>``), then grounds the
detailed caption: the vision tower runs seven times per image, one image at a time. The engine
labels the same files into a fresh dataset (background decoding, one vision encoding per image,
batched decoding, records committed per batch), with the filters off so that its stored results
can be compared with the loop's one by one: the same texts and labels, the same coordinates, scores
within 1e-4. The two alternate over ``--rounds``; the report gives the median images/s of each and
their ratio.

Sizes: ``embedded``: the embedded model on synthetic scenes (its 128 px input); ``base``: the
Florence-2-base shapes (231M parameters at 768 px, 577 image tokens) with random weights and the
embedded model's tokenizer (a 1624-token vocabulary, so a smaller output head than the real base),
decoding at most ``--max-new-tokens`` tokens per task (random weights never stop earlier).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

from florence2 import Florence2, Florence2Processor, ImageProcessor  # noqa: E402
from florence2.config import variant  # noqa: E402
from florence2.data.synthetic import write_split  # noqa: E402
from florence2.image import load_image  # noqa: E402
from florence2.label import DatasetStore, Filters, label  # noqa: E402
from florence2.label.engine import PRESETS  # noqa: E402
from florence2.label.filters import GROUNDING  # noqa: E402
from florence2.model.florence2 import Florence2Model  # noqa: E402
from florence2.pipeline import default_model_path  # noqa: E402

FLD = PRESETS["fld"]
KEEP_ALL = Filters(blocklist=frozenset(), phrases_in_caption=False)


def predictor_for(size: str) -> Florence2:
    if size == "embedded":
        return Florence2.from_pretrained()
    processor = Florence2Processor.from_pretrained(default_model_path())
    processor = Florence2Processor(processor.tokenizer, ImageProcessor(size=(768, 768)), max_positions=1024)
    torch.manual_seed(0)
    model = Florence2Model(variant("base", vocab_size=processor.tokenizer.vocab_size)).init_weights(0.02).eval()
    return Florence2(model, processor, {"num_beams": 1, "no_repeat_ngram_size": 0})


def naive_loop(predictor: Florence2, paths: list[Path], decoding: dict[str, Any]) -> list[dict[str, Any]]:
    """What people write: open each image, one predict call per task, then ground the caption."""
    records = []
    for path in paths:
        image = load_image(path)
        results: dict[str, Any] = {}
        for task in FLD.tasks:
            results.update(predictor.predict(image, task, **decoding))
        caption = results[FLD.ground]
        if caption.strip():
            grounded = predictor.predict(image, GROUNDING, text=caption, **decoding)
            results[GROUNDING] = {**grounded[GROUNDING], "caption": caption}
        results.pop("sequence_scores", None)
        records.append(results)
    return records


def engine(predictor: Florence2, paths: list[Path], out: Path, batch_size: int, workers: int, decoding) -> list:
    label(
        paths, out, model=predictor, preset="fld", batch_size=batch_size, workers=workers, filters=KEEP_ALL, **decoding
    )
    with DatasetStore(out) as store:
        by_path = {r["source"]["path"]: r["results"] for r in store.records()}
    return [by_path[str(path.resolve())] for path in paths]


def same(a: Any, b: Any, scores: bool = False) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k], k.endswith("scores")) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y, scores) for x, y in zip(a, b))
    if scores and isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-4 + 1e-4 * abs(a)
    return a == b


def identical(engine_records: list[dict], naive_records: list[dict]) -> int:
    count = 0
    for stored, naive in zip(engine_records, naive_records):
        stored = {k: v for k, v in stored.items() if k.startswith("<")}
        count += same(stored, naive)
    return count


def run_size(size: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    predictor = predictor_for(size)
    count = args.images if args.images else (32 if size == "embedded" else 4)
    scenes = work / f"scenes-{size}"
    write_split(scenes, count, seed=77)
    paths = sorted(scenes.glob("*.png"))
    decoding = {} if size == "embedded" else {"max_new_tokens": args.max_new_tokens}
    batch = args.batch_size or (8 if size == "embedded" else 4)
    predictor.predict(paths[0], "<CAPTION>", **decoding)  # warm-up: first-call allocations
    rates: dict[str, list[float]] = {"naive": [], "engine": []}
    agree = []
    for round_index in range(args.rounds):
        order = ["naive", "engine"] if round_index % 2 == 0 else ["engine", "naive"]
        outputs = {}
        for arm in order:
            started = time.perf_counter()
            if arm == "naive":
                outputs[arm] = naive_loop(predictor, paths, decoding)
            else:
                outputs[arm] = engine(
                    predictor, paths, work / f"ds-{size}-{round_index}", batch, args.workers, decoding
                )
            seconds = time.perf_counter() - started
            rates[arm].append(len(paths) / seconds)
            print(
                f"{size} round {round_index + 1} {arm}: {seconds:.2f} s, {len(paths) / seconds:.3f} images/s",
                file=sys.stderr,
                flush=True,
            )
        agree.append(identical(outputs["engine"], outputs["naive"]))
    naive, fast = statistics.median(rates["naive"]), statistics.median(rates["engine"])
    return {
        "size": size,
        "parameters": sum(p.numel() for p in predictor.model.parameters()),
        "input": list(predictor.processor.image_size),
        "images": len(paths),
        "batch_size": batch,
        "workers": args.workers,
        "decoding": decoding or "the model's defaults",
        "naive_images_per_s": round(naive, 3),
        "engine_images_per_s": round(fast, 3),
        "ratio": round(fast / naive, 2),
        "identical_images": f"{min(agree)}/{len(paths)}",
        "rounds": {arm: [round(r, 3) for r in values] for arm, values in rates.items()},
    }


def report(rows: list[dict[str, Any]], machine: dict[str, str]) -> str:
    lines = [f"{key}: {value}" for key, value in machine.items()]
    lines += [
        "",
        "| model | images | batch | naive loop img/s | florence2 label img/s | ratio | identical results |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} ({r['parameters'] / 1e6:.1f}M, {r['input'][0]} px) | {r['images']} | {r['batch_size']} | "
            f"{r['naive_images_per_s']} | {r['engine_images_per_s']} | {r['ratio']}x | {r['identical_images']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["embedded", "base", "both"], default="both")
    parser.add_argument("--images", type=int, help="scenes per size (default 32 embedded, 4 base)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both arms")
    parser.add_argument("--batch-size", type=int, help="the engine's batch (default 8 embedded, 4 base)")
    parser.add_argument("--workers", type=int, default=2, help="the engine's reading threads")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="per task at base size")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    sizes = ["embedded", "base"] if args.size == "both" else [args.size]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="florence2-bench-label-") as work:
        rows = [run_size(size, args, Path(work)) for size in sizes]
    machine = machine_info(torch.device("cpu"), torch.get_num_threads())
    print(report(rows, machine))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    return 0 if all(r["identical_images"].split("/")[0] == r["identical_images"].split("/")[1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
