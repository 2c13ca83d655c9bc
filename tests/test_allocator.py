"""The heap settings every run applies (`benchmark.core.allocator`): in force on glibc, off on request, and they
stop the page faults that glibc's defaults cost a batch of 128 images on every forward and backward pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.core.allocator import tune_allocator, uses_glibc
from benchmark.core.errors import BenchmarkError

REPO = Path(__file__).resolve().parents[1]
GLIBC = uses_glibc()

FAULTS = """
import resource, torch
from benchmark.core.allocator import tune_allocator
tuned = tune_allocator()
torch.set_num_threads(1)
from benchmark.models import ModelConfig, ReidModel
model = ReidModel(ModelConfig("reidnet-t", 10)).eval()
x = torch.rand(128, 3, 128, 64)
def step():
    xr = x.clone().requires_grad_(True)
    torch.autograd.grad(model.embed(xr).pow(2).sum(), xr)
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(int(tuned), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(choice: str) -> tuple[int, int]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RRB_MALLOC": choice}
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True, cwd=REPO, env=env)
    tuned, faults = out.stdout.split()
    return int(tuned), int(faults)


def test_the_choice_is_read_from_rrb_malloc(monkeypatch):
    """'system' keeps glibc's defaults, anything but 'tuned' or 'system' is refused with the fix named."""
    monkeypatch.setenv("RRB_MALLOC", "system")
    assert tune_allocator.__wrapped__() is False
    monkeypatch.setenv("RRB_MALLOC", "jemalloc")
    with pytest.raises(BenchmarkError, match="RRB_MALLOC='jemalloc' is not a choice; set it to 'tuned'"):
        tune_allocator.__wrapped__()


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's (mallopt); elsewhere the C library's own apply")
def test_tuned_heap_keeps_pages_thatuses_glibc_gives_back():
    """Three forward+backward passes of 128 images after a warm-up: with glibc's defaults they fault memory
    back in (the kernel zeroes it each time), with the settings in force they reuse what is mapped."""
    system_on, system = _faults("system")
    tuned_on, tuned = _faults("tuned")
    assert (system_on, tuned_on) == (0, 1)
    assert system > 10_000, f"glibc's defaults faulted only {system} pages: the test no longer shows the cost"
    assert tuned * 5 < system, f"tuned heap: {tuned} page faults against {system} with glibc's defaults"
