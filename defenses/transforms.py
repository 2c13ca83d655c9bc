"""Input-transform defenses through ART preprocessors: JPEG compression (Dziugaite et al. 2016;
Das et al. 2017), feature squeezing (Xu et al., NDSS 2018) and median smoothing (Xu et al. 2018).

The ReID model is the undefended one (same checkpoint as `none`); the transform runs before it at
test time. Attacks see the transform through BPDA (Athalye et al., ICML 2018): forward applies
the real, non-differentiable transform, backward passes the gradient straight through. The
transforms here are deterministic, so EOT needs one sample; results say "bpda" so a reader knows
the robustness was measured against an adaptive attacker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from defenses.base import Defense, register_defense


class BPDATransform(nn.Module):
    """Wrap an ART preprocessor: real transform forward, identity gradient backward."""

    def __init__(self, preprocessor: Any, label: str) -> None:
        super().__init__()
        self.preprocessor = preprocessor
        self.label = label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy().astype(np.float32)
        out, _ = self.preprocessor(arr)
        transformed = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(x.device)
        return x + (transformed - x).detach()


class TransformDefense(Defense):
    """Base for test-time input transforms on top of the undefended model."""

    has_input_transform = True
    trains_like = "none"
    attacked_with = "bpda"

    def preprocessor(self) -> Any:
        """The ART preprocessor of this transform."""
        raise NotImplementedError

    def transform(self) -> nn.Module:
        """The transform as attacks see it."""
        return BPDATransform(self.preprocessor(), self.name)


@dataclass(frozen=True)
class JpegOptions:
    """JPEG quality."""
    quality: int = 50


@register_defense("jpeg", kind="input transform", paper="Das et al. 2017 (JPEG), via ART JpegCompression")
class JpegDefense(TransformDefense):
    """JPEG compression of the input (ART JpegCompression), attacked with BPDA."""

    Options = JpegOptions

    def preprocessor(self) -> Any:
        """The ART preprocessor of this transform."""
        from art.defences.preprocessor import JpegCompression

        return JpegCompression(clip_values=(0.0, 1.0), quality=self.options.quality, channels_first=True,
                               apply_fit=False, apply_predict=True)


@dataclass(frozen=True)
class SqueezeOptions:
    """Bit depth."""
    bit_depth: int = 4


@register_defense("squeeze", kind="input transform", paper="Xu et al. NDSS 2018, via ART FeatureSqueezing")
class SqueezeDefense(TransformDefense):
    """Bit-depth reduction of the input (ART FeatureSqueezing), attacked with BPDA."""

    Options = SqueezeOptions

    def preprocessor(self) -> Any:
        """The ART preprocessor of this transform."""
        from art.defences.preprocessor import FeatureSqueezing

        return FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=self.options.bit_depth)


@dataclass(frozen=True)
class SmoothOptions:
    """Median window."""
    window: int = 3


@register_defense("smooth", kind="input transform", paper="Xu et al. NDSS 2018, via ART SpatialSmoothing")
class SmoothDefense(TransformDefense):
    """Median filtering of the input (ART SpatialSmoothing), attacked with BPDA."""

    Options = SmoothOptions

    def preprocessor(self) -> Any:
        """The ART preprocessor of this transform."""
        from art.defences.preprocessor import SpatialSmoothing

        return SpatialSmoothing(window_size=self.options.window, channels_first=True, clip_values=(0.0, 1.0))
