"""In-batch adversarial example generators used by adversarial-training defenses.

They craft on the model in eval mode (fixed BatchNorm statistics, as the test-time attacker
sees it) and restore the training mode; only the input gets gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmark.models import ReidModel, eval_mode

__all__ = ["class_pgd", "eval_mode", "farthest_negative_centroids", "metric_pgd", "pgd", "self_metric_pgd"]


def pgd(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float, step: float, steps: int,
        random_start: bool, generator: torch.Generator) -> torch.Tensor:
    """L-inf PGD maximising `objective(x_adv)` (a scalar) inside the eps-ball and [0, 1]."""
    x = x.detach()
    x_adv = x
    if random_start:
        noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device) * eps
        x_adv = (x + noise).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x_adv), x_adv)
        x_adv = (x + (x_adv.detach() + step * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv.detach()


def farthest_negative_centroids(feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: the centroid of the in-batch identity farthest from it, and that identity's label."""
    ids, inverse = torch.unique(labels, return_inverse=True)
    cents = torch.zeros(len(ids), feats.shape[1], device=feats.device).index_add_(0, inverse, feats)
    cents = cents / torch.bincount(inverse, minlength=len(ids)).clamp(min=1)[:, None].to(feats.dtype)
    d = torch.cdist(feats, cents)
    d[labels[:, None] == ids[None]] = float("-inf")
    far = d.argmax(1)
    return cents[far], ids[far]


def metric_pgd(model: ReidModel, x: torch.Tensor, labels: torch.Tensor, eps: float, step: float, steps: int,
               generator: torch.Generator, random_start: bool = True, max_push: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Metric PGD inside a PK batch: maximise sum_pos d(f(x_hat), f(p)) - d(f(x_hat), mu_far).

    Positives are the clean same-identity batch members (at most `max_push` of them); mu_far is
    the clean centroid of the identity farthest from the sample. Returns (x_adv, far_labels).
    """
    with eval_mode(model), torch.no_grad():
        clean = model.embed(x)
    mu_far, far_labels = farthest_negative_centroids(clean, labels)
    same = (labels[:, None] == labels[None]).float()
    if max_push is not None:  # keep the first max_push positives per row
        same = same * (same.cumsum(1) <= max_push).float()
    same = same / same.sum(1, keepdim=True).clamp(min=1)

    def objective(x_adv: torch.Tensor) -> torch.Tensor:
        emb = model.embed(x_adv)
        push = (torch.cdist(emb, clean).pow(2) * same).sum(1)
        pull = (emb - mu_far).pow(2).sum(1)
        return (push - pull).sum()

    with eval_mode(model):
        x_adv = pgd(objective, x, eps, step, steps, random_start, generator)
    return x_adv, far_labels


def self_metric_pgd(model: ReidModel, x: torch.Tensor, eps: float, step: float, steps: int,
                    generator: torch.Generator) -> torch.Tensor:
    """SMA-style PGD: push the embedding away from its own clean embedding (random start)."""
    with eval_mode(model):
        with torch.no_grad():
            clean = model.embed(x)
        return pgd(lambda xa: (model.embed(xa) - clean).pow(2).sum(), x, eps, step, steps, True, generator)


def class_pgd(model: ReidModel, x: torch.Tensor, labels: torch.Tensor, eps: float, step: float, steps: int,
              generator: torch.Generator) -> torch.Tensor:
    """Madry et al. PGD on the ID classifier's cross-entropy."""
    with eval_mode(model):
        return pgd(lambda xa: F.cross_entropy(model(xa).logits, labels, reduction="sum"), x, eps, step, steps,
                   True, generator)
