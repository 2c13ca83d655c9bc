"""GOAT: guided online adversarial training (Bouniot et al., "Metric adversarial training", 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.core.options import option
from benchmark.core.training import TrainContext, id_loss_and_triplet, optimize
from benchmark.models import ReidModel
from defenses.adversarial import metric_pgd
from defenses.base import Defense, register_defense


@dataclass(frozen=True)
class GOATOptions:
    """GOAT's PGD and number of push guides."""
    eps: float = option(5 / 255, above=0, high=1)
    step: float = option(1 / 255, above=0, high=1)
    steps: int = option(7, low=1, high=1000)
    push_guides: int = option(4, low=1, high=64)


@register_defense("goat", kind="adversarial training", paper="Bouniot et al. 2020 (GOAT)")
class GOAT(Defense):
    """Online metric AT: push from 4 same-ID guides, pull to the farthest negative; adversarial batch only."""

    trains_with = ("fna",)
    Options = GOATOptions
    default_epochs = 10
    warm_start = "none"

    def train_step(self, model: ReidModel, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> dict[str, float]:
        o = self.options
        x_adv, _ = metric_pgd(model, x, y, o.eps, o.step, o.steps, ctx.generator, random_start=True,
                              max_push=o.push_guides)
        loss = id_loss_and_triplet(model, x_adv, y, ctx)
        return optimize(loss, ctx)
