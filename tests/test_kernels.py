"""Measured kernel choices (florence2.model.kernels) and the dtype "auto" (florence2.model.hardware)."""

import threading
import time
import types

import pytest
import torch
import torch.nn.functional as F

from florence2.model import hardware, kernels
from florence2.weights import parse_dtype


@pytest.fixture(autouse=True)
def fresh_choices():
    """Every test starts without measured choices or overrides, and leaves none behind."""
    kernels.clear_choices()
    kernels.set_linear_route("auto")
    kernels.set_vision_route("auto")
    yield
    kernels.clear_choices()
    kernels.set_linear_route(None)
    kernels.set_vision_route(None)


def _slow(fn, seconds):
    def run(*args, **kwargs):
        time.sleep(seconds)
        return fn(*args, **kwargs)

    return run


def _counting(fn, calls):
    def run(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return run


# --- the measuring -------------------------------------------------------------------------------


def test_fastest_times_every_way_and_reports_minimums():
    runs = {"fast": 0, "slow": 0}

    def way(name, seconds):
        def run():
            runs[name] += 1
            time.sleep(seconds)

        return run

    times = kernels.fastest({"fast": way("fast", 0.001), "slow": way("slow", 0.01)})
    assert times["fast"] < times["slow"]
    assert times["slow"] >= 0.01
    # one warm-up, then at least MIN_RUNS timed runs each, the same number for both
    assert runs["fast"] == runs["slow"] >= 1 + kernels.MIN_RUNS
    assert runs["fast"] <= 1 + kernels.MAX_RUNS


@pytest.mark.parametrize("slow_way", ["linear", "few-rows"])
def test_linear_picks_the_faster_route_and_keeps_it(monkeypatch, slow_way):
    weight, bias = torch.randn(64, 32), torch.randn(64)
    x = torch.randn(1, 3, 32)
    if slow_way == "linear":
        monkeypatch.setattr(kernels, "F", types.SimpleNamespace(linear=_slow(F.linear, 0.03)))
    else:
        monkeypatch.setattr(kernels, "few_rows_linear", _slow(kernels.few_rows_linear, 0.03))
    measured = []
    monkeypatch.setattr(kernels, "fastest", _counting(kernels.fastest, measured))
    with torch.inference_mode():
        first = kernels.linear(x, weight, bias)
        again = kernels.linear(x, weight, bias)
    expected = "few-rows" if slow_way == "linear" else "linear"
    assert kernels.choices()["linear"] == {(3, 64, 32, torch.float32, True): expected}
    assert len(measured) == 1  # measured once, then kept
    torch.testing.assert_close(first, F.linear(x, weight, bias))
    torch.testing.assert_close(again, first)


def test_linear_keeps_f_linear_when_the_few_row_route_is_not_clearly_faster(monkeypatch):
    # equal times: the few-row route must beat F.linear by the margin to be kept
    monkeypatch.setattr(kernels, "fastest", lambda ways: dict.fromkeys(ways, 1.0))
    with torch.inference_mode():
        kernels.linear(torch.randn(2, 16), torch.randn(8, 16))
    assert list(kernels.choices()["linear"].values()) == ["linear"]


def test_one_key_per_row_count_shape_dtype_and_bias():
    w = torch.randn(24, 16)
    with torch.inference_mode():
        for rows in (1, 2, 3):
            kernels.linear(torch.randn(rows, 16), w)
        kernels.linear(torch.randn(3, 16), w, torch.randn(24))
        kernels.linear(torch.randn(3, 16).double(), w.double())
        kernels.linear(torch.randn(9, 16), w)  # more rows than FEW_ROWS_MAX: not measured
        kernels.linear(torch.randn(3, 16), w, max_rows=0)  # switched off (export tracing)
    keys = set(kernels.choices()["linear"])
    assert keys == {
        (1, 24, 16, torch.float32, False),
        (2, 24, 16, torch.float32, False),
        (3, 24, 16, torch.float32, False),
        (3, 24, 16, torch.float32, True),
        (3, 24, 16, torch.float64, False),
    }


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("with_bias", [False, True])
def test_both_routes_equal_f_linear_within_rounding(rows, with_bias):
    torch.manual_seed(rows)
    weight = torch.randn(300, 96)
    bias = torch.randn(300) if with_bias else None
    x = torch.randn(rows, 1, 96)
    expected = F.linear(x, weight, bias)
    for route in kernels.LINEAR_ROUTES:
        kernels.set_linear_route(route)
        with torch.inference_mode():
            out = kernels.linear(x, weight, bias)
        assert out.shape == expected.shape and out.is_contiguous()
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_overrides_and_environment(monkeypatch):
    few_calls, linear_calls = [], []
    monkeypatch.setattr(kernels, "few_rows_linear", _counting(kernels.few_rows_linear, few_calls))
    monkeypatch.setattr(kernels, "F", types.SimpleNamespace(linear=_counting(F.linear, linear_calls)))
    x, w = torch.randn(2, 16), torch.randn(8, 16)
    kernels.set_linear_route("few-rows")
    kernels.linear(x, w)
    assert (len(few_calls), len(linear_calls)) == (1, 0)
    kernels.set_linear_route("linear")
    kernels.linear(x, w)
    assert (len(few_calls), len(linear_calls)) == (1, 1)
    assert kernels.choices()["linear"] == {}  # a forced route measures nothing

    monkeypatch.setenv(kernels.LINEAR_ENV, "few-rows")
    monkeypatch.setenv(kernels.VISION_ENV, "split")
    kernels.set_linear_route(None)
    kernels.set_vision_route(None)
    assert (kernels.linear_route(), kernels.vision_route()) == ("few-rows", "split")
    monkeypatch.setenv(kernels.LINEAR_ENV, "fastest")
    kernels.set_linear_route(None)
    with pytest.raises(ValueError, match="FLORENCE2_LINEAR_ROUTE"):
        kernels.linear(x, w)
    with pytest.raises(ValueError, match="unknown route"):
        kernels.set_vision_route("sometimes")


def test_training_and_other_devices_are_not_measured():
    w = torch.randn(8, 16, requires_grad=True)
    out = kernels.linear(torch.randn(2, 16), w)  # gradients on: F.linear, nothing measured
    out.sum().backward()
    assert w.grad is not None
    assert kernels.choices() == {"linear": {}, "vision": {}}


def test_a_choice_is_measured_once_when_threads_arrive_together():
    measured = []
    results = []

    def measure():
        measured.append(1)
        time.sleep(0.05)
        return "linear"

    table: dict = {}

    def ask():
        results.append(kernels.decide(table, "key", measure))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert measured == [1]
    assert results == ["linear"] * 6


# --- batches of images ---------------------------------------------------------------------------


def _encoder(per_batch, per_image, square=0.0):
    """A fake encoder taking per_batch + per_image * n + square * n^2 seconds for n images."""

    def encode(images):
        n = images.shape[0]
        time.sleep(per_batch + per_image * n + square * n * n)
        return images.flatten(1).sum(1, keepdim=True)

    return encode


@pytest.mark.parametrize(
    ("encoder", "expected"),
    [(_encoder(0.01, 0.001), "batch"), (_encoder(0.0, 0.002, square=0.003), "split")],
)
def test_images_take_the_faster_way_and_the_first_call_answers(encoder, expected):
    images = torch.randn(4, 3, 8, 8)
    with torch.inference_mode():
        first = kernels.run_images(encoder, images)
        again = kernels.run_images(encoder, images)
        kernels.run_images(encoder, images[:3])  # the same bucket (4): no new measurement
    assert kernels.choices()["vision"] == {(3, 8, 8, torch.float32, 4): expected}
    torch.testing.assert_close(first, images.flatten(1).sum(1, keepdim=True))
    torch.testing.assert_close(again, first)


def test_single_images_and_training_batches_are_not_measured():
    encode = _encoder(0.0, 0.0)
    kernels.run_images(encode, torch.randn(4, 3, 8, 8))  # gradients on
    with torch.inference_mode():
        kernels.run_images(encode, torch.randn(1, 3, 8, 8))
    assert kernels.choices()["vision"] == {}


def test_vision_tower_batched_equals_one_at_a_time():
    from tests.checkpoints import random_model, tiny_config

    model = random_model(tiny_config(), std=0.05).eval()
    pixel_values = torch.randn(3, 3, 64, 64)
    outputs = {}
    for route in ("batch", "split", "auto"):
        kernels.set_vision_route(route)
        with torch.inference_mode():
            outputs[route] = model.encode_image(pixel_values)
    torch.testing.assert_close(outputs["split"], outputs["batch"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outputs["auto"], outputs["batch"], rtol=1e-4, atol=1e-5)
    assert len(kernels.choices()["vision"]) == 1


# --- dtype "auto" --------------------------------------------------------------------------------

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu
"""


def _cpu(*flags):
    return hardware.CpuFeatures("test CPU", frozenset(flags))


def test_cpuinfo_is_parsed_from_the_first_processor():
    cpu = hardware.parse_cpuinfo(CPUINFO)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu.avx2 and cpu.avx512f and cpu.amx_bf16 and cpu.avx512_bf16 and cpu.native_bfloat16
    assert "amx_int8" in cpu.flags and "bfloat16 native" in cpu.summary()


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        (("avx2", "fma"), False),  # AMD EPYC before Zen 4, Intel client CPUs
        (("avx2", "avx512f", "avx512_vnni"), False),  # Skylake/Cascade Lake Xeon: AVX-512 without BF16
        (("avx2", "avx512f", "avx512_bf16"), True),  # Cooper Lake, AMD Zen 4
        (("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"), True),  # Sapphire Rapids
        (("amx_bf16",), False),  # AMX needs its tiles too
        ((), False),
    ],
)
def test_auto_dtype_on_cpus(flags, native):
    assert _cpu(*flags).native_bfloat16 is native
    expected = torch.bfloat16 if native else torch.float32
    assert hardware.auto_dtype("cpu", cpu=_cpu(*flags)) == expected


def test_parse_dtype_auto_follows_the_detected_cpu(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_features", lambda: _cpu("avx2", "avx512f", "avx512_bf16"))
    assert parse_dtype("auto") == torch.bfloat16
    assert parse_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(hardware, "cpu_features", lambda: _cpu("avx2", "fma"))
    assert parse_dtype("auto") == torch.float32
    assert parse_dtype("bf16") == torch.bfloat16 and parse_dtype(None) == torch.float32
    with pytest.raises(ValueError, match="auto"):
        parse_dtype("float8")


@pytest.mark.parametrize(
    ("capability", "hip", "expected"),
    [((8, 0), None, torch.bfloat16), ((7, 5), None, torch.float16), ((7, 0), "6.0", torch.bfloat16)],
)
def test_auto_dtype_on_gpus(monkeypatch, capability, hip, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", hip)
    assert hardware.auto_dtype("cuda") == expected
    assert parse_dtype("auto", "cuda:0") == expected
    assert hardware.auto_dtype("mps") == torch.float32


def test_this_machine_is_detected():
    cpu = hardware.cpu_features()
    assert cpu.model
    assert hardware.auto_dtype() == (torch.bfloat16 if cpu.native_bfloat16 else torch.float32)


def test_loading_with_auto(monkeypatch):
    from florence2 import Florence2

    monkeypatch.setattr(hardware, "cpu_features", lambda: _cpu("avx512_bf16"))
    assert Florence2.from_pretrained(dtype="auto").model.dtype == torch.bfloat16
    # int8 layers take float32: auto gives them float32 whatever the CPU
    assert Florence2.from_pretrained(dtype="auto", quantize="int8").info()["dtype"] == "float32"
    monkeypatch.setattr(hardware, "cpu_features", lambda: _cpu("avx2"))
    assert Florence2.from_pretrained(dtype="auto").model.dtype == torch.float32


@pytest.mark.parametrize("command", [["predict", "x.png"], ["serve"], ["label", "x.png", "--out", "d"]])
def test_command_lines_accept_dtype_auto(command):
    from florence2.cli import build_parser

    argv = [*command, "--dtype", "auto"]
    assert build_parser(argv).parse_args(argv).dtype == "auto"
