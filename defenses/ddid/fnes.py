"""DDID's farthest-negative extension softening (FNES).

x_temp = x + gamma (x_hat - x) with gamma >= 1 extends the metric adversarial step;
x_adv = omega x + (1 - omega) x_temp with omega ~ U(a, b) mixes it back towards the clean image
(clipped to [0, 1] only, so x_adv may leave the attack's eps-ball: that is the point). The soft
label follows the mixture: y_adv = omega phi(y, lambda1) + (1 - omega) tau(phi(y, lambda2), upsilon),
phi = label smoothing with true-class mass lambda, tau = move mass upsilon from the true class to
the farthest-negative class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.core.losses import smooth_labels
from benchmark.core.options import option


@dataclass(frozen=True)
class FNESConfig:
    """FNES: extension gamma, mixing range (a, b), label masses and the moved mass.

    gamma, b and upsilon (with DDID's lambda_e, meta_split and phase 1's delta2) are the values `sweep --tune ddid`
    chose on validation identities (leaderboards/studies/tuning-synthped.csv); the paper leaves them open."""
    gamma: float = option(3.0, low=0, high=100)
    a: float = option(0.0, low=0, high=1)
    b: float = option(0.75, low=0, high=1)
    lambda1: float = option(1.0, low=0, high=1)
    lambda2: float = option(0.5, low=0, high=1)
    upsilon: float = option(0.1, low=0, high=1)


def extend_and_mix(x: torch.Tensor, x_hat: torch.Tensor, cfg: FNESConfig, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x_adv, omega) with omega one weight per sample."""
    x_temp = x + cfg.gamma * (x_hat - x)
    omega = (cfg.a + (cfg.b - cfg.a) * torch.rand(len(x), generator=generator)).to(x.device)
    w = omega.view(-1, 1, 1, 1)
    return (w * x + (1 - w) * x_temp).clamp(0.0, 1.0), omega


def shift_to_negative(probs: torch.Tensor, labels: torch.Tensor, far_labels: torch.Tensor, upsilon: float
                      ) -> torch.Tensor:
    """tau: move `upsilon` probability mass from the true class to the farthest-negative class."""
    moved = torch.minimum(probs.gather(1, labels[:, None]), torch.full_like(labels[:, None], upsilon,
                                                                           dtype=probs.dtype))
    out = probs.scatter_add(1, labels[:, None], -moved)
    return out.scatter_add(1, far_labels[:, None], moved)


def soft_targets(labels: torch.Tensor, far_labels: torch.Tensor, omega: torch.Tensor, num_classes: int,
                 cfg: FNESConfig) -> torch.Tensor:
    phi1 = smooth_labels(labels, num_classes, cfg.lambda1)
    tau = shift_to_negative(smooth_labels(labels, num_classes, cfg.lambda2), labels, far_labels, cfg.upsilon)
    w = omega.view(-1, 1)
    return w * phi1 + (1 - w) * tau
