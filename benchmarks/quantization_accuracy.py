"""The accuracy cost of fewer bytes per weight (bfloat16, float16, int8) against float32.

    python benchmarks/quantization_accuracy.py                          # embedded model, 200 held-out scenes
    python benchmarks/quantization_accuracy.py --variants bf16,int8 --num-images 20   # a quick check
    python benchmarks/quantization_accuracy.py --random-size base --num-images 0      # random base model only

On the embedded model (or ``--model``) and the held-out synthetic split (world seed 777, 200
scenes at 128 px, as the README's figures): every variant and float32 run the same scenes, and the
report gives per variant the cosine similarity of the image features with float32 (mean and worst
image), generated-token agreement with float32 per task (the share of float32's tokens the variant
reproduces at the same position; sequences of different lengths count the missing positions as
disagreements) and the share of identical answers, and the task figures of
:func:`florence2.eval.synthetic.evaluate_synthetic` for float32 and the variant: detection mAP@0.5
and mAP, and for the brief captions the share naming every category, the category recall and
CIDEr-D (when pycocoevalcap is installed).

With ``--random-size base`` (or ``tiny``) it also builds that configuration with random weights
(N(0, 0.02), as ``bench_inference.py``) and compares each variant with float32 on one random image
and the ``<OD>`` prompt: image-feature cosine, the cosine of the teacher-forced logits at each of
20 positions of float32's greedy answer (mean and worst), and greedy token agreement.

Variants: ``bf16``, ``fp16`` (``dtype=``), ``int8`` (``quantize="int8"``) and ``auto``
(``dtype="auto"``: bfloat16 on CPUs with AMX or AVX512-BF16, float32 on others, so equal to float32
there). Speed is ``bench_inference.py``'s: without native bfloat16 the CPU emulates it, and the
figures here hold while its times would not.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from florence2 import Florence2
from florence2.data.synthetic import WorldConfig, read_split, write_split
from florence2.eval.synthetic import evaluate_synthetic
from florence2.generation import search
from florence2.image import load_image

TASKS = ("<OD>", "<CAPTION>", "<OCR>")  # token agreement
EVAL_TASKS = ("<OD>", "<CAPTION>")  # task figures
FIGURES = (  # (report key, label)
    ("od_mAP50", "<OD> mAP@0.5"),
    ("od_mAP", "<OD> mAP@[.5:.95]"),
    ("caption_all_named", "<CAPTION> naming every category"),
    ("caption_category_recall", "<CAPTION> category recall"),
    ("caption_cider", "<CAPTION> CIDEr-D"),
)
VARIANTS: dict[str, dict[str, Any]] = {
    "bf16": {"dtype": "bfloat16"},
    "fp16": {"dtype": "float16"},
    "int8": {"quantize": "int8"},
    "auto": {"dtype": "auto"},
}
RANDOM_TOKENS = 20
OD_PROMPT = [0, 574, 22486, 5, 8720, 19, 4120, 766, 11, 5, 2274, 4, 2]  # <OD> in Florence-2's vocabulary


def generated_ids(f2: Florence2, images: list, task: str, features: torch.Tensor) -> list[list[int]]:
    sizes = [image.size for image in images]
    prompts = [f2.processor.build_prompt(task, None, None, size) for size in sizes]
    input_ids, mask = f2.processor.tokenize(prompts, f2.num_image_tokens)
    memory, memory_mask = f2.model.encode(features, input_ids, mask)
    out = search(f2.model, memory, memory_mask, f2.decoding_options())
    eos = f2.model.config.text.eos_token_id
    return [row[: row.index(eos, 2) + 1] if eos in row[2:] else row for row in out.sequences.tolist()]


def agreement(reference: list[list[int]], other: list[list[int]]) -> tuple[float, float]:
    """(share of the reference's token positions the other reproduces, share of identical sequences)."""
    same = total = exact = 0
    for a, b in zip(reference, other):
        same += sum(x == y for x, y in zip(a, b))
        total += max(len(a), len(b))
        exact += a == b
    return same / max(total, 1), exact / max(len(reference), 1)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


# --- the embedded model on held-out scenes --------------------------------------------------------


def embedded_report(args: argparse.Namespace, variants: list[str]) -> list[str]:
    folder = Path(tempfile.mkdtemp(prefix="f2-accuracy-"))
    write_split(folder, args.num_images, seed=args.seed, config=WorldConfig(image_size=args.scene_size))
    records = read_split(folder)
    images = [load_image(folder / r["image"]) for r in records]
    names = ["fp32", *variants]
    models = {"fp32": Florence2.from_pretrained(args.model)}
    models.update({name: Florence2.from_pretrained(args.model, **VARIANTS[name]) for name in variants})

    cosines: dict[str, list[torch.Tensor]] = {name: [] for name in variants}
    ids: dict[str, dict[str, list]] = {name: {t: [] for t in TASKS} for name in names}
    with torch.inference_mode():
        for start in range(0, len(images), args.batch_size):
            chunk = images[start : start + args.batch_size]
            pixel_values, _ = models["fp32"].processor.image_processor.preprocess(chunk)
            features = {}
            for name in names:
                features[name] = models[name].model.encode_image(pixel_values)
                for task in TASKS:
                    ids[name][task] += generated_ids(models[name], chunk, task, features[name])
            for name in variants:
                cosines[name].append(
                    torch.nn.functional.cosine_similarity(
                        features["fp32"].float().flatten(1), features[name].float().flatten(1)
                    )
                )
    figures = {
        name: evaluate_synthetic(
            models[name], records, folder, tasks=EVAL_TASKS, batch_size=args.batch_size, progress=False
        )
        for name in names
    }

    header = " | ".join(f"{name} ({str(models[name].model.dtype).removeprefix('torch.')})" for name in variants)
    lines = [
        f"Variants against fp32 on {len(images)} held-out synthetic scenes (seed {args.seed}, {args.scene_size} px), "
        f"model: {args.model or 'embedded'}",
        "",
        f"| measure | fp32 | {header} |",
        "|---|---:|" + "---:|" * len(variants),
    ]
    row = lambda label, ref, values: f"| {label} | {ref} | " + " | ".join(values) + " |"  # noqa: E731
    lines.append(
        row(
            "image features cosine with fp32, mean / worst image",
            "1",
            [f"{torch.cat(cosines[n]).mean():.5f} / {torch.cat(cosines[n]).min():.5f}" for n in variants],
        )
    )
    for task in TASKS:
        values = [agreement(ids["fp32"][task], ids[n][task]) for n in variants]
        lines.append(row(f"{task} token agreement / identical answers", "1", [f"{t:.3f} / {e:.3f}" for t, e in values]))
    for key, label in FIGURES:
        lines.append(row(label, _fmt(figures["fp32"].get(key)), [_fmt(figures[n].get(key)) for n in variants]))
    return lines


# --- random weights at a model size ---------------------------------------------------------------


def random_variant(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """A copy of the float32 ``model`` as ``name`` would load it."""
    from florence2.quantization import quantize_int8
    from florence2.weights import parse_dtype

    options = VARIANTS[name]
    if "quantize" in options:
        return quantize_int8(copy.deepcopy(model))
    return copy.deepcopy(model).to(parse_dtype(options["dtype"]))


def random_report(args: argparse.Namespace, variants: list[str]) -> list[str]:
    from florence2.config import VARIANTS as SIZES
    from florence2.config import variant
    from florence2.generation import generate
    from florence2.model.florence2 import Florence2Model

    if args.random_size in ("base", "large"):
        config, side = SIZES[args.random_size], 768
    else:  # Florence-2's vocabulary, so the prompt ids are valid; everything else small
        config, side = variant(args.random_size, vocab_size=SIZES["base"].text.vocab_size, max_positions=1024), 64
    torch.manual_seed(0)
    model = Florence2Model(config).init_weights(0.02).eval()
    pixel_values = torch.randn(1, 3, side, side)
    prompt = torch.tensor([OD_PROMPT])
    lines = [
        "",
        f"Variants against fp32 on a random-weight {args.random_size} model (N(0, 0.02)), one random "
        f"{side}x{side} image, `<OD>` prompt, {RANDOM_TOKENS} tokens greedy",
        "",
        "| variant | image features cosine, mean / worst token | logits cosine, mean / worst position | "
        "greedy token agreement |",
        "|---|---:|---:|---:|",
    ]
    with torch.inference_mode():
        options = {"num_beams": 1, "max_new_tokens": RANDOM_TOKENS, "no_repeat_ngram_size": 3}
        reference_ids = generate(model, pixel_values, prompt, **options)
        features = model.encode_image(pixel_values)[0]
        logits = model(pixel_values, prompt, decoder_input_ids=reference_ids[:, :-1]).logits[0]
        for name in variants:
            other = random_variant(model, name)
            dtype = other.dtype
            feats = other.encode_image(pixel_values.to(dtype))[0].float()
            other_logits = other(pixel_values.to(dtype), prompt, decoder_input_ids=reference_ids[:, :-1]).logits[0]
            ids = generate(other, pixel_values.to(dtype), prompt, **options)
            feature_cos = torch.nn.functional.cosine_similarity(features, feats, dim=-1)
            logit_cos = torch.nn.functional.cosine_similarity(logits, other_logits.float(), dim=-1)
            tokens, _ = agreement([reference_ids[0, 1:].tolist()], [ids[0, 1:].tolist()])
            lines.append(
                f"| {name} ({str(dtype).removeprefix('torch.')}) | "
                f"{feature_cos.mean():.5f} / {feature_cos.min():.5f} | "
                f"{logit_cos.mean():.5f} / {logit_cos.min():.5f} | {tokens:.3f} |"
            )
            del other
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint folder; default: the embedded model")
    parser.add_argument("--variants", default="bf16,int8", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--num-images", type=int, default=200, help="held-out scenes (0: none)")
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--scene-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument(
        "--random-size", choices=("base", "large", "small", "tiny"), help="also compare on random weights"
    )
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}")

    lines: list[str] = []
    if args.num_images > 0:
        lines += embedded_report(args, variants)
    if args.random_size:
        lines += random_report(args, variants)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
