"""APGD (attacks.apgd) on toy problems whose optimum is known."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from attacks import Attack, AttackContext
from attacks.apgd import APGDOptions, checkpoints
from attacks.base import sq_dist

EPS = 8 / 255


class Flatten(nn.Module):
    """A 'model' whose embedding is its (flattened) input, optionally through a fixed linear map."""

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight if weight is not None else torch.zeros(1), requires_grad=False)
        self.linear = weight is not None

    eot_samples = 1

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return flat @ self.weight.T if self.linear else flat

    def attack_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


class ToTarget(Attack):
    """Concave objective: minus the squared distance to a target image inside the ε-ball."""
    Options = APGDOptions

    def loss(self, emb, x, ctx, index):
        return -sq_dist(emb, ctx.cache["target"][index].flatten(1))


class AwayFromClean(Attack):
    """Convex objective on a linear embedding: maximised at a vertex of the ε-ball."""
    Options = APGDOptions

    def loss(self, emb, x, ctx, index):
        return sq_dist(emb, ctx.query_feats[index])


def _context(n: int) -> AttackContext:
    return AttackContext(query_pids=torch.arange(n), query_feats=torch.zeros(n, 1))


def test_checkpoints_follow_croce_hein():
    assert checkpoints(100)[:4] == [22, 41, 57, 70] and checkpoints(100)[-1] == 100
    assert checkpoints(10)[-1] == 10 and checkpoints(10) == sorted(set(checkpoints(10)))


def test_apgd_reaches_an_interior_optimum():
    """Step halving must let APGD settle on an optimum inside the ball (a fixed signed step cannot)."""
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 4) * 0.5 + 0.25
    target = x + (torch.rand_like(x) * 2 - 1) * EPS * 0.6
    ctx = _context(4)
    ctx.cache["target"] = target
    adv = ToTarget(Flatten(), eps=EPS)(x, ctx)
    assert (adv - x).abs().max() <= EPS + 1e-7
    assert (adv - target).abs().max() < EPS / 20, "APGD did not converge to the interior optimum"


def test_apgd_reaches_the_vertex_optimum_of_a_linear_model():
    torch.manual_seed(1)
    x = torch.rand(3, 3, 8, 4) * 0.5 + 0.25
    w = torch.randn(1, x[0].numel())
    model = Flatten(w)
    ctx = _context(3)
    ctx.query_feats = model.embed(x).detach()
    adv = AwayFromClean(model, eps=EPS, steps=50)(x, ctx)
    best = (EPS * w.abs().sum()) ** 2  # |w . delta| is largest at delta = ±eps sign(w)
    reached = sq_dist(model.embed(adv), ctx.query_feats)
    assert torch.allclose(reached, best.expand(3), rtol=1e-4), (reached, best)


def test_floor_stops_queries_already_broken():
    """A query whose AP is at or below the floor is not iterated further (its first iterate is kept)."""

    @dataclass
    class Scored(AttackContext):
        calls: int = 0

        def can_score(self) -> bool:
            return True

        def query_ap(self, emb, index):
            self.calls += 1
            return torch.zeros(len(index), dtype=torch.float64)  # every query broken from the start

    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 4)
    ctx = Scored(query_pids=torch.arange(2), query_feats=torch.zeros(2, 1))
    ctx.cache["target"] = x
    attack = ToTarget(Flatten(), eps=EPS, floor=0.01, steps=30)
    calls = []
    original = attack.loss_and_gradient
    attack.loss_and_gradient = lambda *a: calls.append(1) or original(*a)
    attack(x, ctx)
    assert len(calls) == 1, "APGD kept iterating queries already at the floor"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_restarts_stay_in_the_ball(norm):
    torch.manual_seed(2)
    x = torch.rand(2, 3, 8, 4)
    ctx = _context(2)
    ctx.cache["target"] = (x + 0.5).clamp(0, 1)
    eps = EPS if norm == "linf" else 0.5
    adv = ToTarget(Flatten(), eps=eps, step=2 * eps, norm=norm, restarts=3, steps=10)(x, ctx)
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all() and adv.min() >= 0 and adv.max() <= 1
