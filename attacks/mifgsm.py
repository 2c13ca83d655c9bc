"""Metric MI-FGSM (Dong et al., CVPR 2018 momentum, on the metric I-FGSM objective of Bai et al.).

Threat model: white-box, L-inf, query side. Defaults: eps = 8/255, step 1/255, 16 iterations,
momentum mu = 1 on the L1-normalised gradient, no random start.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import Attack, AttackContext, AttackOptions, register_attack
from attacks.ifgsm import push_loss
from benchmark.core.enums import AttackFamily
from benchmark.core.options import option


@dataclass(frozen=True)
class MIFGSMOptions(AttackOptions):
    """I-FGSM options plus the momentum factor."""
    momentum: float = option(1.0, low=0, high=100)


@register_attack("mifgsm", paper="Dong et al. CVPR 2018; Bai et al. TPAMI 2020", objective="push")
class MetricMIFGSM(Attack):
    """Metric I-FGSM with a momentum term accumulated over L1-normalised gradients."""

    family = AttackFamily.GRADIENT
    Options = MIFGSMOptions

    def loss(self, emb: torch.Tensor, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
        return push_loss(emb, ctx, index)

    def perturb(self, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        o = self.options
        x_adv = self.start(x, generator)
        velocity = torch.zeros_like(x)
        for _ in range(o.steps):
            grad = self.gradient(x_adv, x, ctx, index)
            grad = grad / grad.abs().flatten(1).sum(1).clamp(min=1e-12).view(-1, 1, 1, 1)
            velocity = o.momentum * velocity + grad
            x_adv = self.project(self.ascend(x_adv, velocity, o.step), x)
        return x_adv
