"""Input-transform defenses through ART preprocessors: JPEG compression (Dziugaite et al. 2016;
Das et al. 2017), feature squeezing (Xu et al., NDSS 2018) and median smoothing (Xu et al. 2018).

The ReID model is the undefended one (same checkpoint as `none`); the ART transform runs before it
at test time and has no gradient of its own. Each defense declares how a white-box attacker
differentiates through it (`defenses.adaptive`): the forward value is always ART's
output, the backward pass that of

- median smoothing: the same median filter in torch (`exact`, equal to ART's output, differentiable
  almost everywhere: the gradient goes to the median pixel of each window);
- JPEG: kornia's differentiable JPEG (`diff-jpeg`; DCT, quantisation with a cubic rounding
  x_r + (x - x_r)^3, chroma subsampling);
- bit-depth reduction: the same rounding made cubic (`cubic`), and a straight-through rounding
  (`ste`); the standard suite runs both and keeps each query's worst case.

`surrogate=bpda` (identity backward through the whole transform) exists for comparison with the
literature; it is a weak attack and puts runs on the custom board.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmark.core.options import option
from defenses.adaptive import AdaptiveForward, select_forwards
from defenses.base import Defense, register_defense


class ArtTransform(nn.Module):
    """An ART preprocessor as a module: numpy forward, no gradient (attacks use the declared surrogate)."""

    def __init__(self, preprocessor: Any, label: str) -> None:
        super().__init__()
        self.preprocessor = preprocessor
        self.label = label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy().astype(np.float32)
        out, _ = self.preprocessor(arr)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(x.device)


def cubic_round(x: torch.Tensor) -> torch.Tensor:
    """Rounding with the gradient of x_r + (x - x_r)^3 (kornia's differentiable rounding)."""
    rounded = x.round()
    return rounded + (x - rounded) ** 3


class CubicSqueeze(nn.Module):
    """Bit-depth reduction with cubic rounding."""

    def __init__(self, bit_depth: int) -> None:
        super().__init__()
        self.levels = float(2 ** bit_depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cubic_round(x * self.levels) / self.levels


class SymmetricMedian(nn.Module):
    """Median filter over each channel with scipy's `reflect` (edge-repeating) border, as ART applies it."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.window
        before, after = w // 2, (w - 1) // 2
        padded = _symmetric_pad(_symmetric_pad(x, before, after, 3), before, after, 2)
        patches = padded.unfold(2, w, 1).unfold(3, w, 1)
        flat = patches.reshape(*patches.shape[:4], w * w)
        # scipy takes the upper median of an even window; torch.median the lower one
        k = (w * w) // 2
        return flat.sort(dim=-1).values[..., k] if w % 2 == 0 else flat.median(dim=-1).values


def _symmetric_pad(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    size = x.shape[dim]
    idx = list(range(before - 1, -1, -1)) + list(range(size)) + list(range(size - 1, size - 1 - after, -1))
    idx = [min(max(i, 0), size - 1) for i in idx]
    return x.index_select(dim, torch.tensor(idx, device=x.device))


class KorniaJpeg(nn.Module):
    """kornia's differentiable JPEG at a quality (images in [0, 1], H and W padded by kornia as needed)."""

    def __init__(self, quality: int) -> None:
        super().__init__()
        self.quality = float(quality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from kornia.enhance import jpeg_codec_differentiable

        quality = torch.full((len(x),), self.quality, device=x.device, dtype=x.dtype)
        return jpeg_codec_differentiable(x, quality).clamp(0.0, 1.0)


@dataclass(frozen=True)
class TransformOptions:
    """Which adaptive forward white-box attacks use: 'auto' (all declared) or one by name ('bpda' too)."""
    surrogate: str = "auto"


class TransformDefense(Defense):
    """Base for test-time input transforms on top of the undefended model."""

    trains_like = "none"
    Options = TransformOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        select_forwards(self, self.options.surrogate)  # an unknown surrogate fails before any work

    def surrogate_choice(self) -> str:
        """The --defense-opt surrogate: 'auto' or one declared forward by name."""
        return self.options.surrogate

    def preprocessor(self) -> Any:
        """The ART preprocessor of this transform."""
        raise NotImplementedError

    def surrogates(self) -> tuple[AdaptiveForward, ...]:
        """The differentiable surrogates of this transform, strongest first."""
        raise NotImplementedError

    def adaptive_forwards(self) -> tuple[AdaptiveForward, ...]:
        """Hook of `defenses.adaptive`: how white-box attacks differentiate through the transform."""
        return self.surrogates()

    def transform(self) -> nn.Module:
        """The transform as deployed: ART's output."""
        return ArtTransform(self.preprocessor(), self.name)


@dataclass(frozen=True)
class JpegOptions(TransformOptions):
    """JPEG quality."""
    quality: int = option(50, low=1, high=100)


@register_defense("jpeg", kind="input transform", paper="Das et al. 2017 (JPEG), via ART JpegCompression")
class JpegDefense(TransformDefense):
    """JPEG compression of the input (ART JpegCompression), attacked through kornia's differentiable JPEG."""

    Options = JpegOptions

    def preprocessor(self) -> Any:
        """The ART preprocessor of this transform."""
        from art.defences.preprocessor import JpegCompression

        return JpegCompression(clip_values=(0.0, 1.0), quality=self.options.quality, channels_first=True,
                               apply_fit=False, apply_predict=True)

    def surrogates(self) -> tuple[AdaptiveForward, ...]:
        """kornia's differentiable JPEG (cubic rounding of the quantised DCT coefficients)."""
        quality = self.options.quality
        return (AdaptiveForward("diff-jpeg", lambda: KorniaJpeg(quality), summary="kornia differentiable JPEG"),)


@dataclass(frozen=True)
class SqueezeOptions(TransformOptions):
    """Bit depth."""
    bit_depth: int = option(4, low=1, high=8)


@register_defense("squeeze", kind="input transform", paper="Xu et al. NDSS 2018, via ART FeatureSqueezing")
class SqueezeDefense(TransformDefense):
    """Bit-depth reduction of the input (ART FeatureSqueezing), attacked through cubic and straight-through rounding."""

    Options = SqueezeOptions

    def preprocessor(self) -> Any:
        """The ART preprocessor of this transform."""
        from art.defences.preprocessor import FeatureSqueezing

        return FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=self.options.bit_depth)

    def surrogates(self) -> tuple[AdaptiveForward, ...]:
        """Cubic rounding, then the straight-through (identity) rounding."""
        bits = self.options.bit_depth
        return (AdaptiveForward("cubic", lambda: CubicSqueeze(bits), summary="cubic rounding"),
                AdaptiveForward("ste", nn.Identity, summary="straight-through rounding"))


@dataclass(frozen=True)
class SmoothOptions(TransformOptions):
    """Median window."""
    window: int = option(3, low=1, high=31)


@register_defense("smooth", kind="input transform", paper="Xu et al. NDSS 2018, via ART SpatialSmoothing")
class SmoothDefense(TransformDefense):
    """Median filtering of the input (ART SpatialSmoothing), attacked through the exact median in torch."""

    Options = SmoothOptions

    def preprocessor(self) -> Any:
        """The ART preprocessor of this transform."""
        from art.defences.preprocessor import SpatialSmoothing

        return SpatialSmoothing(window_size=self.options.window, channels_first=True, clip_values=(0.0, 1.0))

    def surrogates(self) -> tuple[AdaptiveForward, ...]:
        """The same median filter in torch (exact)."""
        window = self.options.window
        return (AdaptiveForward("exact", lambda: SymmetricMedian(window), summary="exact median in torch"),)
