"""What every benchmark report starts with: the machine it ran on (CPU model, cores and the feature
flags that decide its speed, torch and transformers versions, device, GPU name), and for speed
reports its measured limits (memory bandwidth, matrix-multiply peak), against which a time is read
as a share of the fastest the machine could do. A speed-up measured on one CPU is a hypothesis on
the next."""

from __future__ import annotations

import os
import platform
import time

import torch


def machine_info(device: torch.device, threads: int) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    # imported here: benchmark workers import this module and must not load florence2 before they time it
    from florence2.model.hardware import cpu_features

    cpu = cpu_features()

    try:
        transformers_version = version("transformers")
    except PackageNotFoundError:
        transformers_version = "not installed"
    info = {
        "CPU": f"{cpu.model}, {os.cpu_count()} logical cores, torch threads {threads}",
        "CPU flags": cpu.summary().removeprefix(f"{cpu.model}: ")
        + f"; torch dispatch {torch.backends.cpu.get_cpu_capability()}",
        "torch": torch.__version__,
        "transformers": transformers_version,
        "python": platform.python_version(),
        "OS": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["GPU"] = torch.cuda.get_device_name(device)
    return info


def _best_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: page faults, kernel selection
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def memory_bandwidth(device: torch.device, mib: int = 512, repeats: int = 5) -> dict[str, float]:
    """Bytes per second, best of ``repeats``: ``read`` sums a ``mib`` MiB float32 tensor (far larger
    than any cache, as the weights a decoding step reads), ``copy`` copies it (read + write counted)."""
    src = torch.ones(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    nbytes = src.numel() * 4
    read = _best_seconds(lambda: src.sum(), device, repeats)
    copy = _best_seconds(lambda: dst.copy_(src), device, repeats)
    return {"read": nbytes / read, "copy": 2 * nbytes / copy}


def matmul_peak(device: torch.device, dtype: torch.dtype, largest: int = 2048, repeats: int = 3) -> float:
    """FLOP per second of a square matrix product in ``dtype``, best of ``repeats``: the side doubles
    from 256 while one product takes under 0.1 s, up to ``largest`` (a CPU that emulates ``dtype``
    takes minutes for a large one)."""
    n = 256
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        seconds = _best_seconds(lambda a=a, b=b: a @ b, device, repeats)
        if n >= largest or seconds >= 0.1:
            return 2 * n**3 / seconds
        n *= 2


def machine_limits(device: torch.device, dtypes: list[torch.dtype]) -> dict[str, float]:
    """Measured limits: ``read_bandwidth`` and ``copy_bandwidth`` (bytes/s) and ``peak_<dtype>``
    (FLOP/s, per dtype given, e.g. ``peak_float32``), with the current torch thread count."""
    limits = {f"{kind}_bandwidth": value for kind, value in memory_bandwidth(device).items()}
    for dtype in dict.fromkeys(dtypes):
        limits[f"peak_{str(dtype).removeprefix('torch.')}"] = matmul_peak(device, dtype)
    return limits
