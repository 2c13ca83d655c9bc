"""An attack unit test for retrieval: plant an adversarial example that provably exists, and require the suite
to find it (after Zimmermann et al., NeurIPS 2022, "Increasing confidence in adversarial robustness evaluations").

`PlantedModel` wraps a model: a hidden linear probe reads a checkerboard patch in the top-left corner of what the
model sees (after the defense's transform, so the transform stays in the path) and, as the patch's checkerboard
response reaches ε, moves the embedding onto a wrong identity (the centroid of the gallery's distractors). On
clean images the response is near 0 and the embedding is the model's own (clean scores are unchanged to the
reported precision); the image plus ε times the checkerboard lies inside the ε-ball and, by construction,
drives every query's embedding onto the wrong identity. An attack that reaches at least `SHARE` of that planted
damage on every query has found what exists; one whose gradients are masked does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from benchmark.core.metrics import query_scores

SHARE = 0.95           # of the planted damage an attack must reach on a query
SHARPNESS = 12.0       # the probe's gate: sigmoid(SHARPNESS / eps * (response - eps / 2))


def checkerboard(height: int, width: int) -> torch.Tensor:
    """1 x 3 x H x W: +-1 in a checkerboard over the top-left quarter-height, half-width patch, 0 elsewhere."""
    pattern = torch.zeros(1, 3, height, width)
    rows, cols = torch.meshgrid(torch.arange(height // 4), torch.arange(width // 2), indexing="ij")
    pattern[0, :, : height // 4, : width // 2] = ((rows + cols) % 2 * 2 - 1).float()
    return pattern


class PlantedModel(nn.Module):
    """`embed(transform(x))`, moved onto `target` as the checkerboard response of `transform(x)` reaches eps.

    `embed` is the model (its `embed` method, a ReID model's test-time embedding, when it has one); `transform`
    the defense's test-time input transform (identity
    when None) through which gradients flow exactly as they would without the probe.
    """

    def __init__(self, embed: nn.Module, target: torch.Tensor, eps: float, size: tuple[int, int],
                 transform: nn.Module | None = None) -> None:
        super().__init__()
        self.embedder = embed
        self.transform = transform
        self.register_buffer("pattern", checkerboard(*size))
        self.pattern_mass = float(self.pattern.abs().sum())  # the response's normaliser, once, not per forward
        self.register_buffer("target", target.detach().clone())
        self.eps = eps

    def gate(self, seen: torch.Tensor) -> torch.Tensor:
        """How far each image's embedding is moved onto the target, in [0, 1]."""
        response = (seen * self.pattern).sum(dim=(1, 2, 3)) / self.pattern_mass
        return torch.sigmoid(SHARPNESS / self.eps * (response - self.eps / 2)).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The planted embedding of images in [0, 1]."""
        seen = self.transform(x) if self.transform is not None else x
        emb = self.embedder.embed(seen) if hasattr(self.embedder, "embed") else self.embedder(seen)
        return emb + self.gate(seen) * (self.target.to(emb.dtype) - emb)


def planted_images(images: torch.Tensor, eps: float) -> torch.Tensor:
    """The planted adversarial examples: each image plus eps times the checkerboard, clipped to [0, 1]."""
    return (images + eps * checkerboard(*images.shape[2:]).to(images.device)).clamp(0, 1)


@dataclasses.dataclass
class PlantedReport:
    """Per scored query: the planted solution's AP drop, and the share of it each attack reached."""

    clean_ap: torch.Tensor
    planted_ap: torch.Tensor
    reached: dict[str, torch.Tensor]

    @property
    def tested(self) -> torch.Tensor:
        """Queries the planted solution damages (by more than 1 AP point): the ones an attack must find."""
        return ~torch.isnan(self.clean_ap) & (self.clean_ap - self.planted_ap > 0.01)

    def found(self, attack: str) -> float:
        """Fraction of tested queries on which `attack` reached at least SHARE of the planted damage."""
        return float((self.reached[attack][self.tested] >= SHARE).float().mean())


def planted_report(clean_ap: torch.Tensor, planted_ap: torch.Tensor, attacked: dict[str, torch.Tensor]
                   ) -> PlantedReport:
    """Compare each attack's per-query AP (fractions) with the planted solution's."""
    damage = (clean_ap - planted_ap).clamp_min(1e-9)
    reached = {name: ((clean_ap - ap) / damage).nan_to_num(0.0) for name, ap in attacked.items()}
    return PlantedReport(clean_ap, planted_ap, reached)


def score_planted(embed: Callable[[torch.Tensor], torch.Tensor], query_images: torch.Tensor,
                  gallery_feats: torch.Tensor, pids: tuple[torch.Tensor, torch.Tensor],
                  camids: tuple[torch.Tensor, torch.Tensor], eps: float, metric: str = "euclidean") -> torch.Tensor:
    """Per-query AP of the planted adversarial examples, through the deployed model's `embed`."""
    feats = embed(planted_images(query_images, eps))
    ap, _ = query_scores(feats, gallery_feats, pids[0], pids[1], camids[0], camids[1], metric)
    return ap
