"""Device choice: `auto` picks CUDA when present, the CPU otherwise."""

from __future__ import annotations

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


def numerics(device: torch.device) -> dict[str, Any]:
    """What changes floating-point results at the bit level: torch version, device kind, CPU thread count."""
    return {"torch": torch.__version__, "device": device.type,
            "threads": torch.get_num_threads() if device.type == "cpu" else None}


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock timings are real on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
