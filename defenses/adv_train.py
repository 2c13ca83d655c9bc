"""Classification PGD adversarial training (Madry et al., ICLR 2018) on the ID classifier."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.core.options import option
from benchmark.core.training import TrainContext, id_loss_and_triplet, optimize
from benchmark.models import ReidModel
from defenses.adversarial import class_pgd
from defenses.base import Defense, register_defense


@dataclass(frozen=True)
class AdvTrainOptions:
    """PGD settings on the ID classifier."""
    eps: float = option(8 / 255, above=0, high=1)
    step: float = option(2 / 255, above=0, high=1)
    steps: int = option(5, low=1, high=1000)
    clean_weight: float = option(0.0, low=0, high=1)


@register_defense("adv-train", kind="adversarial training", paper="Madry et al. ICLR 2018")
class AdvTrain(Defense):
    """PGD on the ID cross-entropy; CE + triplet on the adversarial batch (no metric attack seen)."""

    Options = AdvTrainOptions
    default_epochs = 10
    warm_start = "none"

    def train_step(self, model: ReidModel, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> dict[str, float]:
        o = self.options
        x_adv = class_pgd(model, x, y, o.eps, o.step, o.steps, ctx.generator)
        loss = id_loss_and_triplet(model, x_adv, y, ctx)
        if o.clean_weight > 0:
            loss = loss + o.clean_weight * id_loss_and_triplet(model, x, y, ctx)
        return optimize(loss, ctx)
