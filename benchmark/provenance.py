"""Who/what/where produced a result: versions, hardware, git commit, command, time."""

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


def package_version() -> str:
    try:
        return importlib.metadata.version("reid-robustness-bench")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent.parent, timeout=5, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent.parent, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return commit + ("+dirty" if dirty.stdout.strip() else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["python", "-m", "benchmark", *sys.argv[1:]])


def provenance(device: torch.device, seed: int) -> dict[str, Any]:
    return {
        "seed": seed,
        "package_version": package_version(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "git_commit": git_commit(),
        "device": device_name(device),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command_line(),
    }
