"""What every benchmark report starts with: the machine it ran on (CPU model and cores, torch and
transformers versions, device, GPU name). A speed-up measured on one CPU is a hypothesis on the next."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine_info(device: torch.device, threads: int) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        transformers_version = version("transformers")
    except PackageNotFoundError:
        transformers_version = "not installed"
    info = {
        "CPU": f"{cpu}, {os.cpu_count()} logical cores, torch threads {threads}",
        "torch": torch.__version__,
        "transformers": transformers_version,
        "python": platform.python_version(),
        "OS": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["GPU"] = torch.cuda.get_device_name(device)
    return info
