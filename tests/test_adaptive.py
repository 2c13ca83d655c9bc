"""Adaptive forwards (defenses.adaptive): surrogates against finite differences, exactness, EOT, views."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attacks import build_attack
from benchmark.core.errors import BenchmarkError
from benchmark.models import ModelConfig, ReidModel
from defenses import DefendedModel, build_defense
from defenses.adaptive import AdaptiveForward, AttackView, declared_forwards, select_forwards
from defenses.transforms import CubicSqueeze, KorniaJpeg, SymmetricMedian


def _directional_check(module: nn.Module, x: torch.Tensor, h: float = 1e-4, tol: float = 2e-2) -> None:
    """Autograd's directional derivative equals a central finite difference of the same module."""
    torch.manual_seed(0)
    v = torch.randn_like(x)
    weights = torch.randn_like(module(x))
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((module(x_req) * weights).sum(), x_req)
    analytic = float((grad * v).sum())
    numeric = float(((module(x + h * v) - module(x - h * v)) * weights).sum() / (2 * h))
    assert analytic == pytest.approx(numeric, rel=tol, abs=tol), (analytic, numeric)


@pytest.mark.parametrize("window", [3, 4, 5])
def test_torch_median_equals_art_and_is_differentiable(window):
    x = torch.rand(2, 3, 16, 8, dtype=torch.float64)  # distinct values: the median is locally linear
    art = build_defense("smooth", window=window).transform()
    assert torch.equal(SymmetricMedian(window)(x.float()), art(x.float()))
    _directional_check(SymmetricMedian(window), x, h=1e-7, tol=1e-4)


def test_cubic_rounding_matches_finite_differences_between_levels():
    x = (torch.randint(0, 15, (2, 3, 8, 4)).double() + 0.1 + 0.3 * torch.rand(2, 3, 8, 4).double()) / 15
    _directional_check(CubicSqueeze(4), x, h=1e-6, tol=1e-4)


def test_differentiable_jpeg_matches_finite_differences():
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64) * 0.6 + 0.2
    _directional_check(KorniaJpeg(50), x, h=1e-5, tol=5e-2)


@pytest.mark.parametrize("name", ["jpeg", "smooth", "squeeze"])
def test_view_outputs_the_real_transform_with_the_surrogate_gradient(name):
    defense = build_defense(name)
    torch.manual_seed(0)
    model = ReidModel(ModelConfig("reidnet-s", 5, 64, 32)).eval()
    deployed = DefendedModel(model, defense.transform()).eval()
    x = torch.rand(2, 3, 64, 32)
    for forward in declared_forwards(defense):
        view = AttackView(deployed, forward)
        assert torch.allclose(view.attack_embed(x), deployed.embed(x), atol=1e-5)
        x_req = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(view.attack_embed(x_req).pow(2).sum(), x_req)
        assert grad.abs().sum() > 0 and torch.isfinite(grad).all()


def test_surrogate_choice_is_validated_and_bpda_is_only_on_request():
    assert [f.name for f in select_forwards(build_defense("squeeze"))] == ["cubic", "ste"]
    assert [f.name for f in select_forwards(build_defense("jpeg"), "bpda")] == ["bpda"]
    assert [f.name for f in declared_forwards(build_defense("none"))] == ["direct"]
    with pytest.raises(BenchmarkError, match="surrogate 'magic' is not one of auto, diff-jpeg, bpda"):
        build_defense("jpeg", surrogate="magic")


class NoisyTransform(nn.Module):
    """A randomised, differentiable transform (additive noise)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 0.05 * torch.randn_like(x)).clamp(0, 1)


def test_eot_averages_the_loss_over_draws():
    torch.manual_seed(0)
    model = ReidModel(ModelConfig("reidnet-s", 5, 64, 32)).eval()
    deployed = DefendedModel(model, NoisyTransform()).eval()
    x = torch.rand(4, 3, 64, 32)
    from attacks import AttackContext

    ctx = AttackContext(query_pids=torch.arange(4), query_feats=deployed.embed(x).detach())
    spread = {}
    for samples in (1, 32):
        view = AttackView(deployed, AdaptiveForward("eot", None, eot_samples=samples))
        attack = build_attack("sma", view)
        start = x + 0.01
        grads = torch.stack([attack.gradient(start, x, ctx, torch.arange(4)) for _ in range(4)])
        spread[samples] = float(grads.std(0).mean() / grads.abs().mean())
    assert spread[32] < spread[1] / 2, f"EOT did not reduce the gradient's variance: {spread}"
