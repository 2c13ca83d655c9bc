"""Furthest-Negative Attack (Bouniot et al., CVPR Workshops 2020).

Threat model: white-box, L-inf, query side, guided by the query set. Defaults: eps = 8/255,
step 1/255, 16 iterations, no random start. Objective: maximise the sum of d(f(x_hat), f(g)) over
same-identity guides minus d(f(x_hat), mu_far), mu_far the centroid of the farthest other identity.
"""

from __future__ import annotations

import torch

from attacks.base import Attack, AttackContext, register_attack, sq_dist
from attacks.guides import farthest_negative_centroid, push_guides
from benchmark.core.enums import AttackFamily


@register_attack("fna", paper="Bouniot et al. CVPRW 2020", objective="fna")
class FurthestNegativeAttack(Attack):
    """Push away from same-ID queries and pull towards the farthest other identity's centroid."""

    family = AttackFamily.GUIDED

    def loss(self, emb: torch.Tensor, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
        guides, mask = push_guides(ctx, index)
        push = (sq_dist(emb[:, None], guides.to(emb.device)) * mask.to(emb.device)).sum(1)
        pull = sq_dist(emb, farthest_negative_centroid(ctx, index).to(emb.device))
        return push / mask.sum(1).to(emb.device) - pull
