"""ONNX Runtime (the fp32 and int8 exports) against our PyTorch fp32 model, same inputs, one run.

    .venv/bin/python benchmarks/bench_onnx.py                      # embedded model and base size
    .venv/bin/python benchmarks/bench_onnx.py --size embedded --rounds 5

For each size the PyTorch predictor is exported with ``florence2.export_onnx(..., quantize="int8")``
(the export checks its graphs against PyTorch) and loaded three ways: PyTorch fp32,
``backend="onnxruntime"`` (fp32 graphs) and ``backend="onnxruntime", quantize="int8"``. Each case
runs ``Florence2.predict`` on one image, pixels to result dict (preprocessing, vision encoder, text
encoder, decoding, parsing): a caption decoded greedily, and ``<OD>`` with 3 beams and the 3-gram
ban. The three backends alternate over ``--rounds`` (their order rotating; on the embedded model a
round times 20 calls); the report gives each median, the speed-up over PyTorch, whether fp32 ONNX
gave PyTorch's results (texts and labels equal, coordinates and scores within 1e-4) and the share
of generated tokens int8 has in common with PyTorch (position by position).

Both backends run with the same number of threads (``--threads``; ONNX Runtime's sessions take
torch's thread count). On a machine shared with other work, one thread each is the stable setting:
PyTorch's two threads stall whenever another process holds the second core.

Sizes: ``embedded``: the embedded model (128 px, 65 image tokens) on an example image, answers of
their natural length; ``base``: the Florence-2-base shapes (768 px, 577 image tokens) with random
weights and the embedded model's tokenizer (a 1624-token vocabulary, so a smaller output head than
the real base: 193M parameters instead of 231M), at most 20 caption and 100 detection tokens. Token
agreement on random weights, whose logits are nearly flat, says little about int8's accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_label import predictor_for  # noqa: E402
from machine import machine_info  # noqa: E402

from florence2 import Florence2, export_onnx, generate  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "florence2" / "assets" / "examples" / "000000.png"
BACKENDS = ("torch fp32", "onnxruntime fp32", "onnxruntime int8")


def cases(size: str) -> dict[str, tuple[str, dict[str, Any]]]:
    limit = {} if size == "embedded" else {"caption": 20, "od": 100}
    return {
        "caption, greedy": ("<CAPTION>", {"num_beams": 1, "no_repeat_ngram_size": 0, **_limit(limit, "caption")}),
        "<OD>, 3 beams, n-gram ban 3": ("<OD>", {"num_beams": 3, "no_repeat_ngram_size": 3, **_limit(limit, "od")}),
    }


def _limit(limits: dict[str, int], case: str) -> dict[str, int]:
    return {"max_new_tokens": limits[case]} if case in limits else {}


def token_ids(predictor: Florence2, task: str, decoding: dict[str, Any]) -> torch.Tensor:
    prepared = predictor.prepare_image(EXAMPLE)
    pixel_values, _ = predictor.processor.image_processor.preprocess([prepared])
    prompt = predictor.processor.build_prompt(task, None, None, prepared.size)
    input_ids, mask = predictor.processor.tokenize([prompt], predictor.num_image_tokens)
    return generate(predictor.model, pixel_values, input_ids, mask, **decoding)[0]


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    length = max(len(a), len(b))
    a, b = (torch.nn.functional.pad(t, (0, length - len(t)), value=-1) for t in (a, b))
    return float((a == b).float().mean())


def same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return isinstance(b, float) and abs(a - b) <= 1e-4 * max(1.0, abs(a))
    return a == b


def run_size(size: str, rounds: int, work: Path) -> list[str]:
    reference = predictor_for(size)  # the embedded model, or base size with random weights
    start = time.perf_counter()
    folder = export_onnx(work / size, reference, quantize="int8")
    export_seconds = time.perf_counter() - start
    predictors = {
        "torch fp32": reference,
        "onnxruntime fp32": Florence2.from_pretrained(folder, backend="onnxruntime"),
        "onnxruntime int8": Florence2.from_pretrained(folder, backend="onnxruntime", quantize="int8"),
    }
    repeats = 20 if size == "embedded" else 1  # calls per backend and round (a round's time is their mean)
    timings: dict[tuple[str, str], list[float]] = {}
    results: dict[tuple[str, str], Any] = {}
    for name, (task, decoding) in cases(size).items():
        for backend, predictor in predictors.items():  # warm-up: first calls allocate
            results[backend, name] = predictor.predict(EXAMPLE, task, **decoding)
    for r in range(rounds):
        order = BACKENDS[r % 3 :] + BACKENDS[: r % 3]
        for name, (task, decoding) in cases(size).items():
            for backend in order:
                begin = time.perf_counter()
                for _ in range(repeats):
                    predictors[backend].predict(EXAMPLE, task, **decoding)
                timings.setdefault((backend, name), []).append((time.perf_counter() - begin) / repeats)
    int8_bytes = sum(p.stat().st_size for p in (folder / "onnx").glob("*_int8.onnx"))
    fp32_bytes = sum(p.stat().st_size for p in (folder / "onnx").glob("*.onnx")) - int8_bytes
    lines = [
        f"\n### {size}: {sum(p.numel() for p in reference.model.parameters()):,} parameters, "
        f"{reference.num_image_tokens} image tokens; export {export_seconds:.1f} s "
        f"(fp32 graphs {fp32_bytes / 2**20:.1f} MiB, int8 {int8_bytes / 2**20:.1f} MiB)\n",
        "| case | PyTorch fp32 | ORT fp32 | ORT int8 | speed-up fp32 / int8 | fp32 same results | int8 same tokens |",
        "|---|---:|---:|---:|---:|:---:|---:|",
    ]
    for name, (task, decoding) in cases(size).items():
        medians = {b: statistics.median(timings[b, name]) for b in BACKENDS}
        expected_ids = token_ids(reference, task, decoding)
        int8_ids = token_ids(predictors["onnxruntime int8"], task, decoding)
        identical = same(results["onnxruntime fp32", name], results["torch fp32", name])
        speedups = " / ".join(f"{medians['torch fp32'] / medians[b]:.2f}x" for b in BACKENDS[1:])
        lines.append(
            f"| {name} ({len(expected_ids) - 1} tokens) | {medians['torch fp32']:.3f} s | "
            f"{medians['onnxruntime fp32']:.3f} s | {medians['onnxruntime int8']:.3f} s | {speedups} | "
            f"{'yes' if identical else 'NO'} | {agreement(expected_ids, int8_ids):.0%} |"
        )
    lines.append("\nraw seconds per round: " + "; ".join(
        f"{b} {n}: {', '.join(f'{t:.3f}' for t in timings[b, n])}" for n in cases(size) for b in BACKENDS
    ))  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["embedded", "base", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="threads of both backends (default: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # ONNX Runtime's sessions follow torch's thread count
    import onnxruntime

    info = machine_info(torch.device("cpu"), torch.get_num_threads())
    print("## ONNX Runtime against PyTorch\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print(
        f"- onnxruntime: {onnxruntime.__version__} (CPUExecutionProvider, {torch.get_num_threads()} intra-op threads)"
    )
    threads = f" --threads {args.threads}" if args.threads else ""
    print(f"- command: python benchmarks/bench_onnx.py --size {args.size} --rounds {args.rounds}{threads}")
    sizes = ["embedded", "base"] if args.size == "both" else [args.size]
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as work:
        for size in sizes:
            print("\n".join(run_size(size, args.rounds, Path(work))), flush=True)


if __name__ == "__main__":
    main()
