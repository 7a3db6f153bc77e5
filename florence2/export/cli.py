"""``florence2 export onnx --out OUT [--model MODEL] [--quantize int8] [--dtype fp16]``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model for other runtimes")
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    o = formats.add_parser(
        "onnx",
        help="ONNX graphs for ONNX Runtime and transformers.js, with the tokenizer and configs",
        description="Write a checkpoint as ONNX graphs (vision encoder, token embeddings, text encoder, merged "
        "decoder with its cache) beside its tokenizer, preprocessor and generation configs, check every graph "
        "against the PyTorch model, and keep the folder only if they agree. Load it with "
        "Florence2.from_pretrained(OUT, backend='onnxruntime'), florence2 predict --backend onnxruntime --model "
        "OUT, or transformers.js.",
    )
    o.add_argument("--out", required=True, help="the folder to write (new, empty, or an earlier export)")
    o.add_argument("--model", help="checkpoint folder (either public layout) or hub id; default: embedded model")
    o.add_argument("--quantize", choices=["int8"], help="also write int8 graphs (ONNX Runtime dynamic quantization)")
    o.add_argument("--dtype", choices=["fp32", "fp16"], help="fp16 also writes float16 graphs (the fp32 ones always)")
    o.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    o.add_argument("--no-check", dest="check", action="store_false", help="skip the comparison with PyTorch")
    o.set_defaults(func=cmd_export_onnx)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from florence2.export.onnx import export_onnx
    from florence2.onnx_model import read_manifest

    out = export_onnx(
        args.out, args.model, quantize=args.quantize, dtype=args.dtype, opset=args.opset, check=args.check
    )
    manifest = read_manifest(out)
    print(f"wrote {out} ({', '.join(manifest['variants'])} graphs, {manifest['parameters']:,} parameters)")
    for path in sorted(p for p in Path(out).rglob("*") if p.is_file()):
        print(f"  {path.relative_to(out)}  {path.stat().st_size / 2**20:.1f} MiB")
    differences = manifest.get("max_abs_difference")
    if differences:
        worst = ", ".join(f"{graph} {value:.1e}" for graph, value in differences.items())
        print(f"largest difference from the PyTorch model: {worst}")
    return 0
