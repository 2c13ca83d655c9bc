"""Self Metric Attack (Bouniot et al., "Vulnerability of Person Re-Identification Models to Metric
Adversarial Attacks", CVPR Workshops 2020).

Threat model: white-box, L-inf, query side, needs no other image. Defaults: eps = 8/255,
step 1/255, 16 iterations, random start in the ball. Objective: maximise d(f(x_hat), f(x)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import Attack, AttackContext, AttackOptions, register_attack, sq_dist
from benchmark.core.enums import AttackFamily


@dataclass(frozen=True)
class SMAOptions(AttackOptions):
    """SMA starts at random in the ε-ball."""
    random_start: bool = True


@register_attack("sma", paper="Bouniot et al. CVPRW 2020", objective="self-distance")
class SelfMetricAttack(Attack):
    """Push the adversarial embedding away from the query's own clean embedding."""

    family = AttackFamily.GRADIENT
    Options = SMAOptions

    def loss(self, emb: torch.Tensor, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
        return sq_dist(emb, ctx.query_feats[index].to(emb.device))
