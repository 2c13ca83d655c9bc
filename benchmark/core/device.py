"""Device choice: `auto` picks CUDA when present, the CPU otherwise."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import torch

from benchmark.core.errors import BenchmarkError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> CUDA when present, else the CPU; a clear error for an unavailable device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda was asked for but no CUDA device is visible; use --device cpu "
                             "or auto")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise BenchmarkError(f"unknown device '{name}'; use auto, cpu or cuda[:N]")
    return torch.device(name)


#: libraries whose code computes numbers of a run (phase 1's diffusion, differentiable JPEG, ART's transforms)
NUMERIC_LIBRARIES = ("diffusers", "kornia", "adversarial-robustness-toolbox", "numpy")


def numerics(device: torch.device) -> dict[str, Any]:
    """What changes floating-point results at the bit level: torch version, device kind, CPU thread count, and
    what tells machines apart (`machine`): the same command gives other bits on another CPU or GPU."""
    return {"torch": torch.__version__, "device": device.type,
            "threads": torch.get_num_threads() if device.type == "cpu" else None, **machine(device)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "-"


@functools.lru_cache(maxsize=8)
def _machine(kind: str, index: int | None) -> tuple[tuple[str, str], ...]:
    cuda = kind == "cuda"
    facts = {"cpu_model": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
             "gpu": torch.cuda.get_device_name(index) if cuda else "",
             "cuda_version": (torch.version.cuda or "") if cuda else "",
             "cudnn_version": str(torch.backends.cudnn.version() or "") if cuda else "",
             "libraries": ";".join(f"{d}={_version(d)}" for d in NUMERIC_LIBRARIES)}
    return tuple(facts.items())


def machine(device: torch.device) -> dict[str, str]:
    """The CPU model and its instruction-set capability, the GPU with its CUDA and cuDNN versions, and the versions
    of the libraries that compute numbers: recorded in every row and cache key, so a row that does not reproduce
    on another machine says why."""
    return dict(_machine(device.type, device.index))


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock timings are real on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def deterministic_kernels() -> None:
    """Bit-reproducible work from here on: kernels with a deterministic variant use it (CPU runs are then bitwise
    repeatable; cuBLAS needs a fixed workspace for that, set before the first CUDA call). Called where work
    starts, not at start-up: enabling it imports torch's compiler stack, seconds before a one-line error."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)

