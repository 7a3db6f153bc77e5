"""Inference benchmark: florence2 against transformers' Florence2ForConditionalGeneration.

Both implementations load the same random-weight checkpoint (written once by ``florence2.save_model``
in the native transformers layout) and get the same inputs. Each implementation runs in its own
fresh Python process (only its own library imported, only its own model in memory), so peak memory
and cold load time are measured under the same process layout; generated ids and image features
come back to this process and are compared.

    python benchmarks/bench_inference.py                       # base size, CPU, fp32, 3 rounds
    python benchmarks/bench_inference.py --size tiny --rounds 1 --out /tmp/bench.md
    python benchmarks/bench_inference.py --device cuda --dtype fp16 --int8
    python benchmarks/bench_inference.py --dtype auto      # ours in dtype="auto", the reference in fp32

Cases (times are medians over ``--rounds`` alternating rounds, each a fresh process per
implementation timing every case ``--repeats`` times after one warm-up):

1. vision encode of one image (768x768 at base size);
2. caption: 20 new tokens, greedy, end to end from pixel values + prompt ids;
3. detection-length output: 100 new tokens, 3 beams, no-repeat 3-gram ban, early stopping;
4. three tasks on one image (<CAPTION>, <OD>, <OCR>; 20 tokens greedy each): ours encodes the
   image once, the reference makes three generate calls;
5. 8 images captioned as one batch, and one at a time (images/s; one at a time = 1 / case 2);
6. peak memory per case (resident set high-water mark, or CUDA peak allocation);
7. cold load from safetensors in a fresh process;
8. ours only: decoding alone, 100 new tokens greedy from one image's encoder output.

Ratios are reference / ours for times and memory, ours / reference for throughput: above 1 means
florence2 is faster (or smaller). Each time is also read against the machine's floor: the report
measures the memory read bandwidth and the matrix-multiply peak first, counts the model's FLOPs
(vision tower, language encoder) and the bytes each decoding step must read (decoder weights and
the output head), and gives the share of the floor each implementation reached. See
benchmarks/README.md for the method.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, machine_limits  # noqa: E402

# Prompt ids of the official tokenizer (Florence-2's BART vocabulary), "<s> prompt </s>".
PROMPTS = {
    "<CAPTION>": [0, 2264, 473, 5, 2274, 6190, 116, 2],  # What does the image describe?
    "<OD>": [0, 574, 22486, 5, 8720, 19, 4120, 766, 11, 5, 2274, 4, 2],  # Locate the objects with ...
    "<OCR>": [0, 2264, 16, 5, 2788, 11, 5, 2274, 116, 2],  # What is the text in the image?
}
# The original vocabulary has no <image> token; the reference embeds its placeholder ids before
# replacing them with image features, so borrow <mask> (50264), which no prompt here contains.
IMAGE_TOKEN_ID = 50264
CAPTION_TOKENS = 20
DETECTION_TOKENS = 100
DETECTION_BEAMS = 3
DECODE_TOKENS = 100  # case 8: greedy decoding alone
NO_REPEAT_NGRAM = 3  # the official generation config's n-gram ban, used by every case
TASKS = ("<CAPTION>", "<OD>", "<OCR>")
INIT_STD = 0.02
SEED = 0

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
AUTO = "auto"  # --dtype auto: ours loads with dtype="auto", the reference in fp32


# --- model sizes ----------------------------------------------------------------------------------


def model_size(name: str) -> tuple[Any, int]:
    """(Florence2Config, image side in pixels) for ``base`` (Florence-2-base) or ``tiny`` (seconds)."""
    from florence2.config import VARIANTS, variant

    if name == "base":
        return VARIANTS["base"].replace(image_token_id=IMAGE_TOKEN_ID), 768
    if name == "tiny":
        # the real vocabulary, so the official prompt ids are valid; everything else small
        return variant(
            "tiny", vocab_size=VARIANTS["base"].text.vocab_size, max_positions=1024, image_token_id=IMAGE_TOKEN_ID
        ), 64
    raise ValueError(f"unknown size {name!r}")


# --- the two implementations behind one interface --------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class OursRunner:
    """florence2: ``load_model`` + ``Florence2Model.encode_image`` / ``generate``."""

    name = "ours"

    @staticmethod
    def import_library() -> None:
        import florence2  # noqa: F401

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype, loader: Callable | None = None) -> None:
        from florence2.weights import load_model

        self.device = device
        self.model = (loader or load_model)(folder, device=device, dtype=dtype)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)

    def generate(self, pixel_values: torch.Tensor, prompt: torch.Tensor, new_tokens: int, beams: int) -> torch.Tensor:
        from florence2.generation import generate

        return generate(
            self.model,
            pixel_values,
            prompt,
            num_beams=beams,
            max_new_tokens=new_tokens,
            no_repeat_ngram_size=NO_REPEAT_NGRAM,
            early_stopping=True,
        )

    def generate_tasks(
        self, pixel_values: torch.Tensor, prompts: list[torch.Tensor], new_tokens: int
    ) -> list[torch.Tensor]:
        """What ``Florence2.predict(image, [tasks])`` does: one vision encoding, then the prompts
        right-padded into one batch for the language encoder and greedy decoding."""
        from florence2.generation import DecodingOptions, search

        options = DecodingOptions.for_model(
            self.model.config, num_beams=1, max_new_tokens=new_tokens, no_repeat_ngram_size=NO_REPEAT_NGRAM
        )
        longest = max(p.shape[1] for p in prompts)
        ids = prompts[0].new_full((len(prompts), longest), self.model.config.text.pad_token_id)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, : prompt.shape[1]] = prompt[0]
            mask[row, : prompt.shape[1]] = 1
        features = self.model.encode_image(pixel_values)
        memory, memory_mask = self.model.encode(features.expand(len(prompts), -1, -1), ids, mask)
        sequences = search(self.model, memory, memory_mask, options).sequences
        return [sequences[row : row + 1] for row in range(len(prompts))]

    def encoder_output(self, pixel_values: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The language encoder's output for one image and prompt: what decoding starts from."""
        return self.model.encode(self.model.encode_image(pixel_values), prompt)

    def decode(self, encoded: tuple[torch.Tensor, Any], new_tokens: int) -> torch.Tensor:
        """Greedy decoding alone (case 8): ``new_tokens`` steps from the encoder output."""
        from florence2.generation import DecodingOptions, search

        options = DecodingOptions.for_model(
            self.model.config, num_beams=1, max_new_tokens=new_tokens, no_repeat_ngram_size=NO_REPEAT_NGRAM
        )
        return search(self.model, *encoded, options).sequences

    @staticmethod
    def routes() -> list[str]:
        """The kernel routes measured in this process (florence2.model.kernels), for the report."""
        from florence2.model import kernels

        choices = kernels.choices()
        linear = [
            f"{rows} x ({out}, {inp}) {str(dtype).removeprefix('torch.')}{' + bias' if bias else ''}: {route}"
            for (rows, out, inp, dtype, bias), route in sorted(choices["linear"].items(), key=str)
        ]
        vision = [
            f"images {c}x{h}x{w} {str(dtype).removeprefix('torch.')}, batches up to {n}: {route}"
            for (c, h, w, dtype, n), route in sorted(choices["vision"].items(), key=str)
        ]
        return linear + vision


class ReferenceRunner:
    """transformers' Florence2ForConditionalGeneration: ``get_image_features`` / ``generate``."""

    name = "reference"

    @staticmethod
    def import_library() -> None:
        from transformers import Florence2ForConditionalGeneration  # noqa: F401

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype, num_image_tokens: int) -> None:
        from transformers import Florence2ForConditionalGeneration
        from transformers.utils import logging

        logging.disable_progress_bar()
        self.device = device
        self.num_image_tokens = num_image_tokens
        model = Florence2ForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        self.model = model.to(device).eval()
        text = self.model.config.text_config
        self.bos, self.eos = text.bos_token_id, text.eos_token_id

    def _inputs(self, prompt: torch.Tensor) -> dict[str, torch.Tensor]:
        # the native model takes <image> placeholders in front of the prompt
        B = prompt.shape[0]
        placeholders = prompt.new_full((B, self.num_image_tokens), IMAGE_TOKEN_ID)
        input_ids = torch.cat([placeholders, prompt], 1)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output

    def generate(self, pixel_values: torch.Tensor, prompt: torch.Tensor, new_tokens: int, beams: int) -> torch.Tensor:
        # forced BOS first and forced EOS at the length limit, as the official generation config;
        # random weights essentially never pick EOS earlier, so max_new_tokens is the length
        return self.model.generate(
            **self._inputs(prompt),
            pixel_values=pixel_values,
            max_new_tokens=new_tokens,
            num_beams=beams,
            no_repeat_ngram_size=NO_REPEAT_NGRAM,
            early_stopping=True,
            do_sample=False,
            forced_bos_token_id=self.bos,
            forced_eos_token_id=self.eos,
        )

    def generate_tasks(
        self, pixel_values: torch.Tensor, prompts: list[torch.Tensor], new_tokens: int
    ) -> list[torch.Tensor]:
        """Three ordinary generate calls on the same pixel values (the vision tower runs each time)."""
        return [self.generate(pixel_values, prompt, new_tokens, 1) for prompt in prompts]


# --- int8 -----------------------------------------------------------------------------------------


def _with_processor_files(folder: Path) -> Path:
    """A sibling folder with the checkpoint's files (linked) plus a tokenizer, for loaders that
    build a whole :class:`florence2.Florence2` (the embedded model's tokenizer: prompts are ids here)."""
    from florence2.pipeline import default_model_path
    from florence2.processor import Florence2Processor

    target = folder.with_name(folder.name + "-with-processor")
    if not target.exists():
        target.mkdir()
        for path in folder.iterdir():
            (target / path.name).symlink_to(path.resolve())
        Florence2Processor.from_pretrained(default_model_path()).save_pretrained(target)
    return target


def find_int8_loader() -> tuple[Callable | None, str]:
    """How florence2 offers int8 inference, looked up at run time, in this order:
    ``load_model(path, quantize="int8")``; a function ``quantize_int8``/``quantize_model``/``quantize``
    taking a loaded model in ``florence2``, ``florence2.quantization``, ``florence2.quantize`` or
    ``florence2.model.quantization``; ``Florence2.from_pretrained(path, quantize="int8")``; such a
    method on ``Florence2Model``. Returns (loader(folder, device, dtype), description) or
    (None, why not)."""
    from florence2.model.florence2 import Florence2Model
    from florence2.pipeline import Florence2
    from florence2.weights import load_model

    if "quantize" in inspect.signature(load_model).parameters:
        return (
            lambda folder, device, dtype: load_model(folder, device=device, dtype=dtype, quantize="int8"),
            "florence2.load_model(path, quantize='int8')",
        )
    names = ("quantize_int8", "quantize_model", "quantize")
    for module_name in ("florence2", "florence2.quantization", "florence2.quantize", "florence2.model.quantization"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                continue
            raise
        for fn_name in names:
            fn = getattr(module, fn_name, None)
            if callable(fn) and not inspect.ismodule(fn):
                return _quantizing_loader(fn), f"{module_name}.{fn_name}(load_model(path))"
    if "quantize" in inspect.signature(Florence2.from_pretrained).parameters:
        return (
            lambda folder, device, dtype: (
                Florence2.from_pretrained(
                    _with_processor_files(Path(folder)), device=device, dtype=dtype, quantize="int8"
                ).model
            ),
            "florence2.Florence2.from_pretrained(path, quantize='int8')",
        )
    for method in names:
        if callable(getattr(Florence2Model, method, None)):
            return (
                _quantizing_loader(lambda model, m=method: getattr(model, m)()),
                f"Florence2Model.{method}() on load_model(path)",
            )
    return None, "florence2 exposes no int8 quantization (no quantize= option or quantize function found)"


def _quantizing_loader(quantize: Callable) -> Callable:
    from florence2.weights import load_model

    def load(folder: Path, device: torch.device, dtype: torch.dtype) -> Any:
        model = load_model(folder, device=device, dtype=dtype)
        quantized = quantize(model)
        return model if quantized is None else quantized  # in place or returning a new model

    return load


# --- peak memory ----------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory of this process during a stretch of code, in MiB.

    CUDA: ``torch.cuda`` peak allocation, reset before the stretch. CPU on Linux: the kernel's
    resident-set high-water mark (VmHWM), reset through ``/proc/self/clear_refs`` before the
    stretch, so every allocation is seen however short-lived. Elsewhere: unavailable."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated (reset per case)"
        elif self._can_reset_hwm():
            self.method = "resident set high-water mark (VmHWM, reset per case via /proc/self/clear_refs)"
        else:
            self.method = "unavailable"

    @staticmethod
    def _can_reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return PeakMemory._status("VmHWM") is not None
        except OSError:
            return False

    @staticmethod
    def _status(field: str) -> float | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
        except OSError:
            pass
        return None

    def current(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**20
        return self._status("VmRSS") if self.method != "unavailable" else None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.method != "unavailable":
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def peak(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self._status("VmHWM") if self.method != "unavailable" else None


# --- worker: one implementation in a fresh process --------------------------------------------------


def _log(impl: str, message: str) -> None:
    print(f"  [{impl}] {message}", file=sys.stderr, flush=True)


def run_worker(spec_path: Path) -> None:
    """Load one implementation, time the cases, write results (JSON) and outputs (tensors)."""
    spec = json.loads(spec_path.read_text())
    impl = spec["impl"]
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    dtype_name = spec["dtype"] if impl == "reference" else spec["ours_dtype"]
    dtype = AUTO if dtype_name == AUTO else DTYPES[dtype_name]  # "auto": load_model resolves it
    folder = Path(spec["folder"])
    memory = PeakMemory(device)
    result: dict[str, Any] = {"impl": impl, "memory_method": memory.method}

    start = time.perf_counter()
    runner_cls = ReferenceRunner if impl == "reference" else OursRunner
    runner_cls.import_library()
    result["import_s"] = time.perf_counter() - start

    if impl == "reference":
        make_runner = lambda: ReferenceRunner(folder, device, dtype, spec["num_image_tokens"])  # noqa: E731
    elif impl == "ours-int8":
        loader, result["int8_method"] = find_int8_loader()
        if loader is None:
            _write_result(spec, result)
            return
        make_runner = lambda: OursRunner(folder, device, dtype, loader)  # noqa: E731
    else:
        make_runner = lambda: OursRunner(folder, device, dtype)  # noqa: E731
    start = time.perf_counter()
    try:
        runner = make_runner()
    except Exception as e:
        if impl != "ours-int8":
            raise
        # int8 may exist for some devices or dtypes only: say why, keep the other figures
        result["int8_method"] += f" failed: {type(e).__name__}: {e}"
        _write_result(spec, result)
        return
    _sync(device)
    result["load_s"] = time.perf_counter() - start
    result["loaded_mib"] = memory.current()
    dtype = runner.model.dtype  # the inputs' dtype: what "auto" resolved to, float32 for int8
    result["dtype"] = str(dtype).removeprefix("torch.")
    _log(impl, f"imported in {result['import_s']:.2f} s, loaded in {result['load_s']:.2f} s")
    if spec["load_only"]:
        _write_result(spec, result)
        return

    inputs = torch.load(spec["inputs"])
    one = inputs["image"].to(device=device, dtype=dtype)
    batch = inputs["batch"].to(device=device, dtype=dtype)
    prompts = {task: torch.tensor([ids], device=device) for task, ids in PROMPTS.items()}
    batch_prompt = prompts["<CAPTION>"].expand(batch.shape[0], -1).contiguous()
    cases: dict[str, Callable[[], Any]] = {
        "vision": lambda: runner.encode_image(one),
        "caption": lambda: runner.generate(one, prompts["<CAPTION>"], CAPTION_TOKENS, 1),
        "detection": lambda: runner.generate(one, prompts["<OD>"], DETECTION_TOKENS, DETECTION_BEAMS),
        "tasks": lambda: runner.generate_tasks(one, [prompts[t] for t in TASKS], CAPTION_TOKENS),
        "batch": lambda: runner.generate(batch, batch_prompt, CAPTION_TOKENS, 1),
        "decode": lambda: runner.decode(encoded, DECODE_TOKENS),
    }
    cases = {name: fn for name, fn in cases.items() if name in spec["cases"]}
    encoded = None

    times: dict[str, list[float]] = {}
    peaks: dict[str, float | None] = {}
    starts: dict[str, float | None] = {}
    outputs: dict[str, Any] = {}
    with torch.inference_mode():
        # one warm-up per implementation through every code path (vision tower, language
        # encoder, greedy and beam decoding): first calls pay one-off costs (lazy imports,
        # kernel selection) that a per-case warm-up would only repeat
        start = time.perf_counter()
        runner.generate(one, prompts["<CAPTION>"], 3, 1)
        _sync(device)
        result["first_call_s"] = time.perf_counter() - start
        runner.generate(one, prompts["<OD>"], 3, DETECTION_BEAMS)
        if "batch" in cases:  # the batch's shapes too: ours measures its kernel routes on first use
            runner.generate(batch, batch_prompt, 3, 1)
        if "decode" in cases:
            encoded = runner.encoder_output(one, prompts["<OD>"])
        _sync(device)
        for name, fn in cases.items():
            starts[name] = memory.current()
            memory.reset()
            times[name] = []
            for _ in range(spec["repeats"]):
                start = time.perf_counter()
                out = fn()
                _sync(device)
                times[name].append(time.perf_counter() - start)
            peaks[name] = memory.peak()
            outputs[name] = _to_cpu(out)
            _log(impl, f"{name}: median {statistics.median(times[name]):.3f} s of {len(times[name])}")
            del out
    result.update(times=times, peak_mib=peaks, start_mib=starts)
    if impl != "reference":
        result["routes"] = runner.routes()
    torch.save(outputs, spec["outputs"])
    _write_result(spec, result)


def _to_cpu(out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """Ids as they are, features as fp32, on the CPU."""
    if isinstance(out, list):
        return [_to_cpu(t) for t in out]
    return out.float().cpu() if out.is_floating_point() else out.cpu()


def _write_result(spec: dict[str, Any], result: dict[str, Any]) -> None:
    Path(spec["result"]).write_text(json.dumps(result))


# --- driver ---------------------------------------------------------------------------------------


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def merge_rounds(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One implementation's rounds as one result: every timing and load sample, the highest
    memory peak per case, and the first round's outputs (every round's ids must agree)."""
    if not results:
        return None
    merged = dict(results[0])
    if "times" in merged:
        merged["times"] = {case: [t for res in results for t in res["times"][case]] for case in merged["times"]}
        merged["peak_mib"] = {
            case: max((res["peak_mib"][case] for res in results if res["peak_mib"][case] is not None), default=None)
            for case in merged["peak_mib"]
        }
    if "load_s" in merged:
        merged["load_samples"] = [res["load_s"] for res in results]
        merged["import_samples"] = [res["import_s"] for res in results]
    for res in results[1:]:
        for case, out in res.get("outputs", {}).items():
            if case != "vision" and not _same(out, merged["outputs"][case]):
                raise SystemExit(f"{merged['impl']}: round outputs of {case!r} differ between processes")
    return merged


def launch(spec: dict[str, Any], workdir: Path, tag: str, check: bool = True) -> dict[str, Any] | None:
    """Run one worker process; returns its results (None if it failed and ``check`` is off)."""
    spec = {
        **spec,
        "result": str(workdir / f"{tag}.json"),
        "outputs": str(workdir / f"{tag}.pt"),
    }
    spec_path = workdir / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)], env=env)
    if proc.returncode != 0:
        if check:
            raise SystemExit(f"the {spec['impl']} worker failed (exit code {proc.returncode}); see its output above")
        return None
    result = json.loads(Path(spec["result"]).read_text())
    if Path(spec["outputs"]).is_file():
        result["outputs"] = torch.load(spec["outputs"])
    return result


def build_checkpoint(size: str, folder: Path) -> tuple[Any, int, int]:
    """Random N(0, 0.02) weights (LayerNorms 1/0, convolutions PyTorch's default), saved natively."""
    from florence2.model.florence2 import Florence2Model
    from florence2.weights import save_model

    config, image_size = model_size(size)
    torch.manual_seed(SEED)
    model = Florence2Model(config).init_weights(INIT_STD).eval()
    n_params = sum(p.numel() for p in model.parameters())
    save_model(model, folder)
    return config, image_size, n_params


# --- the machine's floor ---------------------------------------------------------------------------


def model_costs(config: Any, image_size: int) -> dict[str, Any]:
    """What the cases must compute and read, counted on a weightless (meta) copy of the model:
    ``vision_flops`` for one image (DaViT + projector); per task prompt ``encoder_flops`` (language
    encoder over the image tokens and the prompt) and ``cross_kv`` (elements of the cross-attention
    keys and values a decoding step reads per image and prompt); ``step_weights``: the weights a
    decoding step reads (the decoder without its cross-attention key/value projections, which run
    once per answer, plus the output head) as (matrix elements, int8 when quantized; other
    elements: biases, norms). The self-attention cache (a few MB at 100 tokens) is left out."""
    from torch.utils.flop_counter import FlopCounterMode

    from florence2.model.florence2 import Florence2Model

    with torch.device("meta"):
        model = Florence2Model(config).eval()
    counted = lambda fn: _count_flops(FlopCounterMode, fn)  # noqa: E731
    with torch.inference_mode():
        pixels = torch.empty(1, 3, image_size, image_size, device="meta")
        vision_flops, features = counted(lambda: model.encode_image(pixels))
        encoder_flops = {
            task: counted(lambda ids=ids: model.encode(features, torch.tensor([ids], device="meta")))[0]
            for task, ids in PROMPTS.items()
        }
    linear = other = 0
    for name, param in model.language_model.decoder.named_parameters():
        if ".encoder_attn.k_proj." in name or ".encoder_attn.v_proj." in name or "embed_positions" in name:
            continue  # cross-attention keys/values are projected once; one position row per step
        if name.endswith("proj.weight") or name.endswith(("fc1.weight", "fc2.weight")):
            linear += param.numel()
        else:
            other += param.numel()
    linear += model.language_model.shared.weight.numel()  # the tied output head
    text = config.text
    cross_kv = {
        task: 2 * text.decoder_layers * text.d_model * (features.shape[1] + len(ids)) for task, ids in PROMPTS.items()
    }
    return {
        "vision_flops": vision_flops,
        "encoder_flops": encoder_flops,
        "cross_kv": cross_kv,
        "step_weights": (linear, other),
    }


def _count_flops(counter_cls: Any, fn: Callable[[], Any]) -> tuple[int, Any]:
    counter = counter_cls(display=False)
    with counter:
        out = fn()
    return counter.get_total_flops(), out


def floors(costs: dict[str, Any], limits: dict[str, float], dtype: str, n_batch: int, int8: bool = False) -> dict:
    """Per case, the least time the machine could take (seconds): the vision tower's and the
    language encoder's FLOPs at the measured matmul peak of ``dtype``, plus per decoding step the
    larger of its bytes at the measured read bandwidth (the step's weights, and the cross-attention
    keys and values of each image and prompt) and its FLOPs at the peak. ``int8``: decoding steps
    read one byte per matrix element; only decoding is floored (int8 products have no measured
    peak). A case whose limits were not measured gives None."""
    peak = None if int8 else limits.get(f"peak_{dtype}")
    bandwidth = limits.get("read_bandwidth")
    size = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    linear, other = costs["step_weights"]
    weight_bytes = linear * (1 if int8 else size) + other * (4 if int8 else size)

    def step(items: list[str], rows: int) -> float | None:
        if not bandwidth:
            return None
        seconds = (weight_bytes + size * sum(costs["cross_kv"][task] for task in items)) / bandwidth
        return max(seconds, 2 * (linear + other) * rows / peak) if peak else seconds

    def case(items: list[str], images: int, steps: int, rows: int) -> float | None:
        per_step = step(items, rows)
        if per_step is None or (images and not peak):
            return None
        flops = images * costs["vision_flops"] + sum(costs["encoder_flops"][task] for task in items)
        return (flops / peak if images else 0.0) + steps * per_step

    return {
        "vision": costs["vision_flops"] / peak if peak else None,
        "caption": case(["<CAPTION>"], 1, CAPTION_TOKENS, 1),
        "detection": case(["<OD>"], 1, DETECTION_TOKENS, DETECTION_BEAMS),
        "tasks": case(list(TASKS), 1, CAPTION_TOKENS, len(TASKS)),
        "batch": case(["<CAPTION>"] * n_batch, n_batch, CAPTION_TOKENS, n_batch),
        "decode": case(["<OD>"], 0, DECODE_TOKENS, 1),
        "step": step(["<OD>"], 1),
        "step_bytes": weight_bytes + size * costs["cross_kv"]["<OD>"],
    }


def _fmt_share(floor: float | None, seconds: float | None) -> str:
    return "-" if not floor or not seconds else f"{100 * floor / seconds:.0f}%"


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _fmt_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _median(samples: list[float] | None) -> float | None:
    return statistics.median(samples) if samples else None


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num and den else None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)


def _new_tokens(ids: Any) -> list[int]:
    if isinstance(ids, list):
        return [n for t in ids for n in _new_tokens(t)]
    return [ids.shape[1] - 1]  # sequences start with the decoder start token


def make_report(args: argparse.Namespace, meta: dict[str, Any], ref: dict, ours: dict, int8: dict | None) -> str:
    n_batch = args.batch_size
    tasks = ", ".join(f"`{t}`" for t in TASKS)  # backticks: a bare <OD> is an HTML tag in markdown
    short = {
        "vision": "1. vision encode",
        "caption": "2. caption",
        "detection": "3. detection length",
        "tasks": "4. three tasks, one image",
        "batch": f"5a. {n_batch} images, one batch",
    }
    labels = {
        "vision": f"1. vision encode, 1 image {meta['image_size']}x{meta['image_size']}",
        "caption": f"2. caption, {CAPTION_TOKENS} new tokens, greedy, pixels + prompt ids -> ids",
        "detection": f"3. detection length, {DETECTION_TOKENS} new tokens, {DETECTION_BEAMS} beams, "
        f"no-repeat {NO_REPEAT_NGRAM}-gram, early stopping",
        "tasks": f"4. three tasks on one image ({tasks}), {CAPTION_TOKENS} tokens greedy each",
        "batch": f"5a. {n_batch} images captioned as one batch ({CAPTION_TOKENS} tokens greedy)",
    }
    expected_tokens = {
        "caption": CAPTION_TOKENS,
        "detection": DETECTION_TOKENS,
        "tasks": CAPTION_TOKENS,
        "batch": CAPTION_TOKENS,
    }
    ref_dtype, ours_dtype = ref["dtype"], ours["dtype"]
    floor = {
        "reference": floors(meta["costs"], meta["limits"], ref_dtype, n_batch),
        "ours": floors(meta["costs"], meta["limits"], ours_dtype, n_batch),
    }
    dtypes = ref_dtype if ref_dtype == ours_dtype else f"reference {ref_dtype}, ours {ours_dtype}"
    if meta["dtype"] == AUTO:
        dtypes += ' (ours: dtype="auto")'
    lines = [f"# Florence-2 inference benchmark: florence2 vs transformers ({meta['size']})", ""]
    lines += [f"- {k}: {v}" for k, v in meta["machine"].items()]
    lines += [f"- measured limits: {_fmt_limits(meta['limits'])}"]
    lines += [
        f"- model: {meta['size']} config, {meta['n_params']:,} parameters, random weights "
        f"(N(0, {INIT_STD}) linear/embedding, LayerNorm 1/0), {dtypes}; "
        f"{meta['num_image_tokens']} image tokens",
        "- reference: transformers Florence2ForConditionalGeneration; ours: florence2 "
        "(same safetensors checkpoint, same inputs)",
        f"- method: median over {args.rounds} round(s) x {args.repeats} repeat(s); each round runs the "
        "implementations one after the other (alternating their order), each in a fresh process with one "
        "warm-up; ratio = reference / ours (> 1: florence2 is faster)",
        f"- run: {meta['date']}, {meta['wall_s']:.0f} s in all",
        "",
        "| case | reference (median) | ours (median) | ratio | floor | reference at floor | ours at floor "
        "| ids identical |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    notes: list[str] = []
    for case, label in labels.items():
        r, o = _median(ref["times"].get(case)), _median(ours["times"].get(case))
        if case == "vision":
            diff = (ref["outputs"]["vision"] - ours["outputs"]["vision"]).abs().max().item()
            check = f"features max abs diff {diff:.1e}"
        else:
            same = _same(ref["outputs"][case], ours["outputs"][case])
            check = "yes" if same else "**NO**"
            if not same and ref_dtype != ours_dtype:  # other precision: say how many tokens agree
                agree, total = _agreement(ref["outputs"][case], ours["outputs"][case])
                check = f"no ({agree}/{total} tokens agree)"
            got = set(_new_tokens(ref["outputs"][case]) + _new_tokens(ours["outputs"][case]))
            if got != {expected_tokens[case]}:
                notes.append(f"{case}: generated {sorted(got)} new tokens instead of {expected_tokens[case]}")
        f_ref, f_ours = floor["reference"][case], floor["ours"][case]
        floor_text = _fmt_time(f_ours) if f_ref == f_ours else f"{_fmt_time(f_ref)} / {_fmt_time(f_ours)}"
        lines.append(
            f"| {label} | {_fmt_time(r)} | {_fmt_time(o)} | {_fmt_ratio(_ratio(r, o))} | {floor_text} | "
            f"{_fmt_share(f_ref, r)} | {_fmt_share(f_ours, o)} | {check} |"
        )

    # 5: throughput. One at a time is case 2's work per image, so its rate is 1 / case-2 median.
    ref_batch = n_batch / _median(ref["times"]["batch"])
    ours_batch = n_batch / _median(ours["times"]["batch"])
    ref_single = 1 / _median(ref["times"]["caption"])
    ours_single = 1 / _median(ours["times"]["caption"])
    lines += [
        f"| 5b. {n_batch} images as one batch, images/s | {ref_batch:.3f} | {ours_batch:.3f} | "
        f"{_fmt_ratio(ours_batch / ref_batch)} | | | | |",
        f"| 5c. one image at a time, images/s (1 / case 2) | {ref_single:.3f} | {ours_single:.3f} | "
        f"{_fmt_ratio(ours_single / ref_single)} | | | | |",
    ]
    r_load, o_load = _median(ref["load_samples"]), _median(ours["load_samples"])
    r_imp, o_imp = _median(ref["import_samples"]), _median(ours["import_samples"])
    # the reference memory-maps the checkpoint and reads it at first use: compare time to a first answer too
    r_first, o_first = (res["import_s"] + res["load_s"] + res["first_call_s"] for res in (ref, ours))
    lines += [
        f"| 7. cold load from safetensors, fresh process (median of {len(ours['load_samples'])}) | "
        f"{_fmt_time(r_load)} | {_fmt_time(o_load)} | {_fmt_ratio(_ratio(r_load, o_load))} | | | | |",
        f"| 7b. import of the library (after torch) | {_fmt_time(r_imp)} | {_fmt_time(o_imp)} | "
        f"{_fmt_ratio(_ratio(r_imp, o_imp))} | | | | |",
        f"| 7c. import + load + first call (3-token caption), one fresh process | {_fmt_time(r_first)} | "
        f"{_fmt_time(o_first)} | {_fmt_ratio(_ratio(r_first, o_first))} | | | | |",
        "",
        "Floor: the least time this machine could take for the case's work, from the measured limits "
        "above: the vision tower's and the language encoder's FLOPs (counted by torch's FLOP counter) at "
        "the matmul peak of the dtype, plus per decoding step the larger of its bytes (the decoder's "
        "weights without the cross-attention key/value projections, the output head, and the "
        "cross-attention keys and values of each image and prompt) at the read bandwidth and its FLOPs "
        "at the peak. One vision encoding per image, as ours does in case 4. 'At floor' = floor / median "
        "time (100% would be the machine's limit).",
        "",
        f"Throughput: ours batched / reference batched = {ours_batch / ref_batch:.2f}x; "
        f"ours batched / reference one at a time = {ours_batch / ref_single:.2f}x; "
        f"ours batched / ours one at a time = {ours_batch / ours_single:.2f}x.",
        "",
    ]
    if notes:
        lines += ["Length check: " + "; ".join(notes) + ".", ""]
    else:
        lines += ["Length check: every generation produced exactly the requested number of new tokens.", ""]

    unit = "CUDA peak allocated" if args.device == "cuda" else "peak RSS"
    lines += [
        f"## 6. Peak memory ({ours['memory_method']})",
        "",
        "Per case, over its repeats, in each implementation's own process. 'Above start' is the peak "
        "minus the memory held when the case began (model, inputs, library).",
        "",
        f"| case | reference {unit} | ours {unit} | ratio | reference above start | ours above start |",
        "|---|---:|---:|---:|---:|---:|",
        f"| after load (model resident) | {_fmt_mib(ref['loaded_mib'])} | {_fmt_mib(ours['loaded_mib'])} | "
        f"{_fmt_ratio(_ratio(ref['loaded_mib'], ours['loaded_mib']))} | | |",
    ]
    for case, label in short.items():
        rp, op = ref["peak_mib"].get(case), ours["peak_mib"].get(case)
        # the peak cannot be below the start; a page or two may move between the two readings
        r_above = None if rp is None else max(0.0, rp - ref["start_mib"][case])
        o_above = None if op is None else max(0.0, op - ours["start_mib"][case])
        lines.append(
            f"| {label} | {_fmt_mib(rp)} | {_fmt_mib(op)} | {_fmt_ratio(_ratio(rp, op))} | "
            f"{_fmt_mib(r_above)} | {_fmt_mib(o_above)} |"
        )
    lines.append("")

    lines += _decode_section(meta, ours, int8, floor["ours"])
    if ours.get("routes") is not None:
        lines += [
            "## Kernel routes ours measured (first round)",
            "",
            "Few-row products (rows x weight shape): F.linear or W @ x.T; batches of images: as one batch or "
            "one at a time; each timed both ways at first use and kept (florence2.model.kernels).",
            "",
        ]
        lines += [f"- {route}" for route in ours["routes"]] or ["- none measured"]
        lines.append("")
    if args.int8:
        lines += ["## int8 (ours)", ""]
        lines += _int8_section(ours, int8)
    lines += ["## Raw timings (seconds)", ""]
    for impl, res in (("reference", ref), ("ours", ours), ("ours int8", int8)):
        if not res or "times" not in res:
            continue
        for case, samples in res["times"].items():
            lines.append(f"- {impl} {case}: {', '.join(f'{s:.4f}' for s in samples)}")
        lines.append(f"- {impl} load: {', '.join(f'{s:.4f}' for s in res['load_samples'])}")
    return "\n".join(lines) + "\n"


def _fmt_limits(limits: dict[str, float]) -> str:
    parts = [
        f"memory read {limits['read_bandwidth'] / 1e9:.1f} GB/s (copy {limits['copy_bandwidth'] / 1e9:.1f} GB/s, "
        "read + write)"
    ]
    parts += [
        f"{key.removeprefix('peak_')} matmul {value / 1e9:.1f} GFLOP/s"
        for key, value in limits.items()
        if key.startswith("peak_")
    ]
    return "; ".join(parts)


def _agreement(a: Any, b: Any) -> tuple[int, int]:
    """(new tokens equal at the same position, new tokens in the longer) over all sequences."""
    if isinstance(a, list):
        pairs = [_agreement(x, y) for x, y in zip(a, b)]
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    same = total = 0
    for x, y in zip(a[:, 1:].tolist(), b[:, 1:].tolist()):
        same += sum(p == q for p, q in zip(x, y))
        total += max(len(x), len(y))
    return same, total


def _decode_section(meta: dict[str, Any], ours: dict, int8: dict | None, ours_floor: dict) -> list[str]:
    """Case 8: decoding alone, per step, against the floor of the bytes a step reads."""
    rows = [("ours", ours, ours_floor)]
    if int8 and "decode" in int8.get("times", {}):
        rows.append(("ours int8", int8, floors(meta["costs"], meta["limits"], "float32", 1, int8=True)))
    lines = [
        f"## 8. Decoding alone (ours): {DECODE_TOKENS} new tokens greedy from one image's encoder output (`<OD>`)",
        "",
        "| | dtype | time | per step | bytes read per step | floor per step | at floor |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, res, floor in rows:
        t = _median(res["times"]["decode"])
        per_step = t / DECODE_TOKENS if t else None
        dtype = "int8 weights" if name == "ours int8" else res["dtype"]
        lines.append(
            f"| {name} | {dtype} | {_fmt_time(t)} | {_fmt_time(per_step)} | {floor['step_bytes'] / 1e6:,.0f} MB | "
            f"{_fmt_time(floor['step'])} | {_fmt_share(floor['step'], per_step)} |"
        )
    lines += [
        "",
        "Bytes per step: the decoder's weights without the cross-attention key/value projections, the output "
        "head and the cross-attention keys and values of the image and prompt; floor = those bytes at the "
        "measured read bandwidth (or the step's FLOPs at the matmul peak, if longer).",
        "",
    ]
    return lines


def _fmt_mib(mib: float | None) -> str:
    return "-" if mib is None else f"{mib:,.0f} MiB"


def _int8_section(ours: dict, int8: dict | None) -> list[str]:
    if int8 is None:
        return ["The int8 worker failed; see the output above.", ""]
    if "times" not in int8:
        return [f"Skipped: {int8.get('int8_method')}.", ""]
    f_cap, q_cap = _median(ours["times"]["caption"]), _median(int8["times"]["caption"])
    f_vis, q_vis = _median(ours["times"]["vision"]), _median(int8["times"]["vision"])
    f_dec, q_dec = _median(ours["times"].get("decode")), _median(int8["times"].get("decode"))
    fp_ids, q_ids = ours["outputs"]["caption"][0, 1:], int8["outputs"]["caption"][0, 1:]
    n = max(len(fp_ids), len(q_ids))
    agree = int((fp_ids[: len(q_ids)] == q_ids[: len(fp_ids)]).sum())
    cos = torch.nn.functional.cosine_similarity(ours["outputs"]["vision"], int8["outputs"]["vision"], dim=-1)
    return [
        f"Entry point: `{int8['int8_method']}`.",
        "",
        "| | ours fp | ours int8 | ratio fp / int8 |",
        "|---|---:|---:|---:|",
        f"| vision encode | {_fmt_time(f_vis)} | {_fmt_time(q_vis)} | {_fmt_ratio(_ratio(f_vis, q_vis))} |",
        f"| caption, {CAPTION_TOKENS} tokens greedy | {_fmt_time(f_cap)} | {_fmt_time(q_cap)} | "
        f"{_fmt_ratio(_ratio(f_cap, q_cap))} |",
        f"| decoding alone, {DECODE_TOKENS} tokens greedy (case 8) | {_fmt_time(f_dec)} | {_fmt_time(q_dec)} | "
        f"{_fmt_ratio(_ratio(f_dec, q_dec))} |",
        f"| cold load | {_fmt_time(_median(ours['load_samples']))} | {_fmt_time(_median(int8['load_samples']))} | "
        f"{_fmt_ratio(_ratio(_median(ours['load_samples']), _median(int8['load_samples'])))} |",
        f"| memory after load | {_fmt_mib(ours['loaded_mib'])} | {_fmt_mib(int8['loaded_mib'])} | "
        f"{_fmt_ratio(_ratio(ours['loaded_mib'], int8['loaded_mib']))} |",
        f"| peak memory, caption | {_fmt_mib(ours['peak_mib']['caption'])} | {_fmt_mib(int8['peak_mib']['caption'])} | "
        f"{_fmt_ratio(_ratio(ours['peak_mib']['caption'], int8['peak_mib']['caption']))} |",
        "",
        f"Caption token agreement with full precision: {agree}/{n} new tokens "
        f"({'identical' if _same(ours['outputs']['caption'], int8['outputs']['caption']) else 'not identical'}). "
        f"Image features, cosine similarity per image token: mean {cos.mean().item():.5f}, "
        f"min {cos.min().item():.5f}.",
        "",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("base", "tiny"), default="base", help="model size (tiny: seconds)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds of one fresh process per implementation"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per case and round")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--dtype",
        choices=(*DTYPES, AUTO),
        default="fp32",
        help='weights and inputs; auto: ours with dtype="auto" (bf16 on CPUs with native bf16), the reference fp32',
    )
    parser.add_argument("--int8", action="store_true", help="also measure florence2's int8 option, if it has one")
    parser.add_argument("--batch-size", type=int, default=8, help="images in the batched caption case")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores available)")
    parser.add_argument(
        "--out", type=Path, default=None, help="markdown report (default: benchmarks/results-<device>.md)"
    )
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.rounds < 1:
        parser.error("--repeats and --rounds must be >= 1")
    if args.out is None:
        suffix = args.device if args.size == "base" else f"{args.device}-{args.size}"
        args.out = Path(__file__).resolve().parent / f"results-{suffix}.md"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        run_worker(args.worker)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    began = time.perf_counter()
    threads = args.threads or default_threads()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="florence2-bench-") as tmp:
        workdir = Path(tmp)
        folder = workdir / "checkpoint"
        print(f"building a random-weight {args.size} checkpoint in {folder}", file=sys.stderr)
        config, image_size, n_params = build_checkpoint(args.size, folder)
        num_image_tokens = config.num_image_tokens((image_size, image_size))
        generator = torch.Generator().manual_seed(SEED)
        torch.save(
            {
                "image": torch.randn(1, 3, image_size, image_size, generator=generator),
                "batch": torch.randn(args.batch_size, 3, image_size, image_size, generator=generator),
            },
            workdir / "inputs.pt",
        )
        from florence2.weights import parse_dtype  # here: the workers time their own first import

        torch.set_num_threads(threads)
        reference_dtype = "fp32" if args.dtype == AUTO else args.dtype
        ours_dtype = parse_dtype(args.dtype, device)
        print("measuring the machine's memory bandwidth and matmul peak", file=sys.stderr)
        limits = machine_limits(device, [DTYPES[reference_dtype], ours_dtype])
        costs = model_costs(config, image_size)
        spec = {
            "folder": str(folder),
            "inputs": str(workdir / "inputs.pt"),
            "device": args.device,
            "dtype": reference_dtype,
            "ours_dtype": args.dtype,
            "threads": threads,
            "repeats": args.repeats,
            "num_image_tokens": num_image_tokens,
            "cases": ["vision", "caption", "detection", "tasks", "batch", "decode"],
            "load_only": False,
        }
        impls = ("reference", "ours")
        if args.int8:
            impls += ("ours-int8",)
        # Rounds alternate the implementations, each in a fresh process timing every case once per
        # repeat, so that a machine whose speed drifts (shared or virtual CPUs) slows all alike.
        print(f"timing every case in {args.rounds} alternating round(s) of fresh processes", file=sys.stderr)
        rounds: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
        for r in range(args.rounds):
            for impl in impls if r % 2 == 0 else impls[::-1]:
                impl_spec = {**spec, "impl": impl}
                if impl == "reference":
                    impl_spec["cases"] = [case for case in spec["cases"] if case != "decode"]
                elif impl == "ours-int8":  # int8 layers take float32
                    impl_spec.update(cases=["vision", "caption", "decode"], ours_dtype=reference_dtype)
                res = launch(impl_spec, workdir, f"{impl}-{r}", check=impl != "ours-int8")
                if res is not None:
                    rounds[impl].append(res)
        results = {impl: merge_rounds(rounds[impl]) for impl in ("reference", "ours")}
        int8 = merge_rounds(rounds["ours-int8"]) if args.int8 else None
        meta = {
            "size": args.size,
            "image_size": image_size,
            "num_image_tokens": num_image_tokens,
            "n_params": n_params,
            "dtype": args.dtype,
            "machine": machine_info(device, threads),
            "limits": limits,
            "costs": costs,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "wall_s": time.perf_counter() - began,
        }
        report = make_report(args, meta, results["reference"], results["ours"], int8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
