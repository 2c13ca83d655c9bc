"""Mixed precision (`--amp`): bf16 autocast for training and feature extraction, never for attacks.

bf16 keeps float32's exponent range, so it needs no loss scaling; fp16 would need a GradScaler inside
every defense's own backward passes (meta-updates, discriminator), and is not offered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

#: mixed-precision modes a run may ask for
AMP_MODES = ("off", "bf16")


@contextlib.contextmanager
def mixed_precision(amp: str, device: torch.device, model: torch.nn.Module | None = None) -> Iterator[None]:
    """bf16 autocast when `amp` is 'bf16' (and `model`'s weights channels-last meanwhile); float32 otherwise."""
    if amp == "off":
        yield
        return
    if model is not None:
        model.to(memory_format=torch.channels_last)
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    finally:
        if model is not None:
            model.to(memory_format=torch.contiguous_format)  # safetensors stores contiguous tensors
