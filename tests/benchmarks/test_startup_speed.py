"""Start-up before a one-line error, against `import torch` alone, timed interleaved in one run
(`pytest tests/benchmarks/test_startup_speed.py --benchmark-only`; the ratio is in extra_info)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ERROR = [sys.executable, "-m", "benchmark", "run", "--eps", "abc"]
TORCH = [sys.executable, "-c", "import torch"]


def _seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=REPO, capture_output=True, timeout=120)
    return time.perf_counter() - start


def test_one_line_error_start_up_against_import_torch(benchmark):
    pairs = [(_seconds(TORCH), _seconds(ERROR)) for _ in range(7)]  # interleaved: both see the same load
    ratios = [error / torch for torch, error in pairs]
    benchmark.extra_info.update({"ratio_median": statistics.median(ratios), "ratios": ratios,
                                 "import_torch_s": [t for t, _ in pairs], "one_line_error_s": [e for _, e in pairs]})
    benchmark.pedantic(_seconds, args=(ERROR,), rounds=1, iterations=1)
    assert statistics.median(ratios) < 1.6
