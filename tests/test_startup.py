"""Start-up stays light: `--help`, `list` and one-line errors load neither torchvision, nor torch's compiler
stack, nor pandas (each costs a second or more before the user sees anything).
Timings: tests/benchmarks/test_startup_speed.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torchvision", "torch._inductor", "torch._dynamo", "pandas", "diffusers", "matplotlib")
PROBE = """
import sys
from benchmark.cli.main import main
try:
    main(ARGV)
except SystemExit:
    pass
print("LOADED", sorted({".".join(m.split(".")[:2]) for m in sys.modules if m.startswith(HEAVY)}))
"""


COMMANDS = [["--help"], ["list"], ["run", "--eps", "abc"], ["run", "--defense", "nosuch"]]


def test_start_up_and_one_line_errors_skip_heavy_imports():
    # one interpreter for all four: modules only accumulate, so none loaded at the end means none after each
    code = "\n".join(PROBE.replace("ARGV", repr(argv)).replace("HEAVY", repr(HEAVY)) for argv in COMMANDS)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    loaded = [line for line in out.stdout.splitlines() if line.startswith("LOADED")]
    assert loaded == ["LOADED []"] * len(COMMANDS), list(zip(COMMANDS, loaded, strict=False))
