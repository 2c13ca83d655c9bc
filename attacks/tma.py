"""Targeted metric attack: impersonation of another identity (Bai et al. TPAMI 2020, targeted form).

Threat model: white-box, L-inf, query side, guided. Defaults: eps = 8/255, step 1/255,
16 iterations. Objective: minimise d(f(x_hat), mu_t), mu_t the clean-query centroid of a seeded
random other identity t. Success shows up as lost retrieval of the true identity.
"""

from __future__ import annotations

import torch

from attacks.base import Attack, AttackContext, register_attack, sq_dist
from attacks.guides import target_centroid
from benchmark.core.enums import AttackFamily


@register_attack("tma", paper="Bai et al. TPAMI 2020 (targeted)", objective="targeted")
class TargetedMetricAttack(Attack):
    """Pull the embedding towards a chosen other identity's centroid."""

    family = AttackFamily.GUIDED

    def loss(self, emb: torch.Tensor, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
        return -sq_dist(emb, target_centroid(ctx, index).to(emb.device))
