"""Metric adversarial training: PGD towards the farthest negative, CE + triplet (DDID's ablation baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.core.options import option
from benchmark.core.training import TrainContext, id_loss_and_triplet, optimize
from benchmark.models import ReidModel
from defenses.adversarial import metric_pgd
from defenses.base import Defense, register_defense


@dataclass(frozen=True)
class MetricATOptions:
    """Metric PGD settings."""
    eps: float = option(8 / 255, above=0, high=1)
    step: float = option(2 / 255, above=0, high=1)
    #: chosen by `sweep --tune metric-at` on validation identities (leaderboards/studies/tuning-synthped.csv)
    steps: int = option(7, low=1, high=1000)
    clean_weight: float = option(0.5, low=0, high=1)


@register_defense("metric-at", kind="adversarial training",
                  paper="Bai et al. TPAMI 2020; DDID (arXiv 2511.09933) Table 3 baseline")
class MetricAT(Defense):
    """Metric PGD (push same-ID, pull farthest negative) with CE + triplet on adversarial and clean images."""

    trains_with = ("fna",)
    Options = MetricATOptions
    default_epochs = 10
    warm_start = "none"
    #: what `sweep --tune` may move: the training attack's budget
    search_space = {"eps": ("4/255", "6/255", "8/255", "10/255"), "steps": ("3", "5", "7")}

    def train_step(self, model: ReidModel, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> dict[str, float]:
        o = self.options
        x_adv, _ = metric_pgd(model, x, y, o.eps, o.step, o.steps, ctx.generator)
        loss = id_loss_and_triplet(model, x_adv, y, ctx)
        if o.clean_weight > 0:
            loss = (loss + o.clean_weight * id_loss_and_triplet(model, x, y, ctx)) / (1 + o.clean_weight)
        return optimize(loss, ctx)
