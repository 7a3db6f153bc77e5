"""The inference benchmark script end to end on the tiny config (seconds), plus its int8 hook."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_inference.py"


def test_tiny_benchmark_writes_table_with_identical_ids(tmp_path):
    out = tmp_path / "results.md"
    args = ["--size", "tiny", "--rounds", "2", "--batch-size", "2", "--int8", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = out.read_text()
    assert report.strip() in proc.stdout  # printed as well as written
    rows = {line.split(" | ")[0].lstrip("| "): line for line in report.splitlines() if line.startswith("| ")}
    for case in ("2. caption", "3. detection length", "4. three tasks", "5a. 2 images"):
        row = next(line for name, line in rows.items() if name.startswith(case))
        assert row.rstrip(" |").endswith("yes"), row  # generated ids identical to the reference
    assert "features max abs diff" in rows["1. vision encode, 1 image 64x64"]
    assert "every generation produced exactly the requested number of new tokens" in report
    assert "## 6. Peak memory" in report and "7. cold load from safetensors" in report
    assert "torch: " + torch.__version__ in report
    # int8: measured when florence2 offers it, else skipped with the reason
    int8 = report.split("## int8 (ours)")[1]
    assert "Caption token agreement with full precision" in int8 or "Skipped:" in int8


def test_int8_loader_lookup_reports_absence_or_a_loader():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_inference
    finally:
        sys.path.remove(str(SCRIPT.parent))
    loader, how = bench_inference.find_int8_loader()
    assert (loader is None) == how.startswith("florence2 exposes no int8")
