"""What the machine computes natively, detected rather than guessed, and the dtype ``"auto"`` picks.

bfloat16 halves the bytes every decoding step reads and, on CPUs that multiply it natively, doubles
the matrix-multiply peak (or more, with AMX). On CPUs without it PyTorch converts bfloat16 to
float32 inside each product, which saves little or is slower, so ``"auto"`` takes it only where the
CPU says it has it:

* **CPU**: bfloat16 when the CPU flags (Linux ``/proc/cpuinfo``) name AMX (``amx_bf16`` with
  ``amx_tile``: Intel Xeon from Sapphire Rapids on) or AVX512-BF16 (``avx512_bf16``: Intel Cooper
  Lake, Sapphire Rapids and later, AMD Zen 4 and later); float32 otherwise, and wherever the flags
  cannot be read (other systems).
* **CUDA**: bfloat16 where the GPU computes it natively (compute capability 8.0 and later, and ROCm),
  float16 on older GPUs.
* any other device: float32.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

# the flags that matter for this model's speed, in the order reports list them
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's model name and its feature flags (lower case, as Linux names them)."""

    model: str
    flags: frozenset[str]

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512f(self) -> bool:
        return "avx512f" in self.flags

    @property
    def amx_bf16(self) -> bool:
        return "amx_bf16" in self.flags and "amx_tile" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        return "avx512_bf16" in self.flags

    @property
    def native_bfloat16(self) -> bool:
        """Whether the CPU multiplies bfloat16 natively (AMX or AVX512-BF16)."""
        return self.amx_bf16 or self.avx512_bf16

    def summary(self) -> str:
        """``"AMD EPYC: avx2 fma (no avx512f ...), bfloat16 not native"``: for reports."""
        have = [f for f in REPORTED_FLAGS if f in self.flags]
        lack = [f for f in REPORTED_FLAGS if f not in self.flags]
        parts = " ".join(have) or "none of " + " ".join(REPORTED_FLAGS)
        if have and lack:
            parts += f" (no {' '.join(lack)})"
        return f"{self.model}: {parts}; bfloat16 {'native' if self.native_bfloat16 else 'not native'}"


def parse_cpuinfo(text: str) -> CpuFeatures:
    """The model name and flags of the first processor in a ``/proc/cpuinfo`` text."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name == "model name" and not model:
            model = value.strip()
        elif name in ("flags", "Features") and not flags:  # x86 / ARM spelling
            flags = frozenset(value.lower().split())
    return CpuFeatures(model or platform.processor() or platform.machine(), flags)


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's CPU (read once per process). Without ``/proc/cpuinfo`` only AVX2/AVX-512 are
    known, from PyTorch's own dispatch level; no bfloat16 support is assumed."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        capability = torch.backends.cpu.get_cpu_capability()
        flags = {"AVX2": {"avx2"}, "AVX512": {"avx2", "avx512f"}}.get(capability, set())
        return CpuFeatures(platform.processor() or platform.machine(), frozenset(flags))


def cuda_bfloat16(device: torch.device | None = None) -> bool:
    """Whether the GPU computes bfloat16 natively: compute capability 8.0 (Ampere) or later, or ROCm."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device) >= (8, 0)


def auto_dtype(device: str | torch.device | None = None, cpu: CpuFeatures | None = None) -> torch.dtype:
    """The dtype ``"auto"`` means on ``device`` (default the CPU); ``cpu`` replaces the detected CPU."""
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cpu":
        return torch.bfloat16 if (cpu or cpu_features()).native_bfloat16 else torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if cuda_bfloat16(device) else torch.float16
    return torch.float32
