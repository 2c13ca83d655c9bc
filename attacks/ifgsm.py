"""Metric I-FGSM (Bai et al., "Adversarial Metric Attack and Defense for Person Re-identification", TPAMI 2020).

Threat model: white-box, L-inf, query side. Defaults: eps = 8/255, step 1/255, 16 iterations,
no random start. Objective: maximise the sum of d(f(x_hat), f(g)) over the same-identity guide
queries g (the query itself included).
"""

from __future__ import annotations

import torch

from attacks.base import Attack, AttackContext, register_attack, sq_dist
from attacks.guides import push_guides
from benchmark.core.enums import AttackFamily


def push_loss(emb: torch.Tensor, ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
    """Sum of squared distances to the same-identity guide features."""
    guides, mask = push_guides(ctx, index)
    d = sq_dist(emb[:, None], guides.to(emb.device))
    return (d * mask.to(emb.device)).sum(1)


@register_attack("ifgsm", paper="Bai et al. TPAMI 2020 (metric I-FGSM)", objective="push")
class MetricIFGSM(Attack):
    """Iterative signed-gradient ascent pushing away from all same-ID query features."""

    family = AttackFamily.GRADIENT

    def loss(self, emb: torch.Tensor, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
        return push_loss(emb, ctx, index)
