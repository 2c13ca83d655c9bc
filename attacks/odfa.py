"""Opposite-Direction Feature Attack (Zheng et al., "Open-set Adversarial Examples", arXiv 1809.02681).

Threat model: white-box, L-inf, query side. Defaults: eps = 8/255, step 1/255, 16 iterations.
Objective: minimise d(f(x_hat), -f(x)), i.e. drive the embedding towards its own opposite.
"""

from __future__ import annotations

import torch

from attacks.base import Attack, AttackContext, register_attack, sq_dist
from benchmark.core.enums import AttackFamily


@register_attack("odfa", paper="Zheng et al. 2018 (ODFA)", objective="opposite-direction")
class OppositeDirectionFeatureAttack(Attack):
    """Pull the embedding towards the negation of the clean embedding."""

    family = AttackFamily.GRADIENT

    def loss(self, emb: torch.Tensor, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
        return -sq_dist(emb, -ctx.query_feats[index].to(emb.device))
