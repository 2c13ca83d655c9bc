"""Who/what/where produced a result: versions, hardware, git commit and tree state, command, time."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from benchmark.core.device import machine

REPO = Path(__file__).resolve().parents[2]  # the checkout: benchmark/core/provenance.py -> ../../..
#: paths whose changes do not make the tree dirty: outputs and prose, not code
NOT_CODE = (":(exclude)results", ":(exclude)leaderboards", ":(exclude)*.md")


def package_version() -> str:
    """The installed version of this package."""
    try:
        return importlib.metadata.version("reid-robustness-bench")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str:
    """The checked-out commit (12 hex digits), or 'unknown' outside a git checkout."""
    out = _git("rev-parse", "--short=12", "HEAD")
    return out.strip() if out else "unknown"


def tree_dirty() -> bool:
    """True when tracked code differs from the commit (outputs under results/, leaderboards/ and *.md excluded)."""
    out = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE)
    return bool(out and out.strip())


def commit_label() -> str:
    """The commit, with '+dirty' when tracked code has uncommitted changes.

    Taken when the command started (`set_command`), so a checkout during a long run cannot relabel
    results computed with the code the process loaded.
    """
    return _START_COMMIT if _START_COMMIT is not None else git_commit() + ("+dirty" if tree_dirty() else "")


def device_name(device: torch.device) -> str:
    """GPU name, or cpu-<arch>-<threads>threads (thread count changes floating-point results)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"


_ARGV: list[str] | None = None
_START_COMMIT: str | None = None


def set_command(argv: list[str] | None) -> None:
    """Record the arguments of the command being run and the commit it started at (the CLI does; sweep
    workers pass their cell's)."""
    global _ARGV, _START_COMMIT
    _ARGV = list(argv) if argv is not None else None
    _START_COMMIT = None
    _START_COMMIT = commit_label()


def command_argv() -> list[str]:
    """The arguments of the command being run (after `python -m benchmark`)."""
    return list(_ARGV) if _ARGV is not None else sys.argv[1:]


def command_line() -> str:
    """The command as a user would type it again."""
    return " ".join(shlex.quote(a) for a in ["python", "-m", "benchmark", *command_argv()])


def now() -> str:
    """UTC time stamp, seconds resolution."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def training_provenance(device: torch.device, seed: int) -> dict[str, Any]:
    """What a checkpoint records about how it was trained."""
    return {"git_commit": commit_label(), "date": now(), "torch_version": torch.__version__,
            "package_version": package_version(), "device": device_name(device), **machine(device), "seed": seed,
            "command": command_line()}


def provenance(device: torch.device, seed: int) -> dict[str, Any]:
    """What every result row records about the evaluation that produced it."""
    return {
        "seed": seed,
        "package_version": package_version(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "git_commit": commit_label(),
        "device": device_name(device),
        **machine(device),
        "date": now(),
        "command": command_line(),
    }
