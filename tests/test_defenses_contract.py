"""Every registered defense honours the contract (timm's tests/test_models.py pattern)."""

from __future__ import annotations

import json

import pytest
import torch

from attacks import ATTACKS
from benchmark.core.training import TrainConfig
from benchmark.models import ModelConfig, ReidModel
from defenses import DEFENSES, DefendedModel, build_defense
from defenses.adaptive import AttackView, declared_forwards

FAST_OPTIONS = {"ddid": {"train_steps": 2, "sample_steps": 2}}


@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_contract(name, tiny_ws, tmp_path):
    defense = build_defense(name, **FAST_OPTIONS.get(name, {}))
    assert set(defense.seen_attacks()) <= set(ATTACKS.names()), "trains_with must name registered attacks"
    json.dumps(defense.config())  # recorded in every result: must be JSON
    n_classes = len(torch.unique(tiny_ws.train.pids))
    model = ReidModel(ModelConfig("reidnet-s", n_classes, 64, 32))
    before = [p.clone() for p in model.parameters()]
    history = defense.fit(model, tiny_ws.train, TrainConfig(epochs=1, p=4, k=4), torch.device("cpu"))
    json.dumps(history, default=str)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), "fit trained nothing"
    x = tiny_ws.query.float_images(slice(0, 4))
    transform = defense.transform()
    if transform is not None:
        out = transform(x)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    model.eval()
    deployed = DefendedModel(model, transform).eval()
    for forward in declared_forwards(defense):
        view = AttackView(deployed, forward).eval()
        x_req = (x + 0.01 * torch.rand_like(x)).clamp(0, 1).requires_grad_(True)
        (grad,) = torch.autograd.grad(view.attack_embed(x_req).pow(2).sum(), x_req)
        assert torch.isfinite(grad).all(), f"{name} [{forward.name}]: non-finite input gradient"
        assert (grad.flatten(1).abs().amax(1) > 0).all(), f"{name} [{forward.name}]: zero input gradient"
        assert torch.allclose(view.attack_embed(x), deployed.embed(x), atol=1e-5), \
            f"{name} [{forward.name}]: the adaptive forward must output what the defense computes"
    emb = model.embed(x)
    model.save(tmp_path / name)
    again = ReidModel.load(tmp_path / name).eval()
    assert torch.allclose(again.embed(x), emb, atol=1e-5)
    assert not list(tmp_path.glob(f"{name}/*.pt")) and not list(tmp_path.glob(f"{name}/*.pkl"))


def test_unknown_defense_option_names_valid_ones():
    from benchmark.core.errors import BenchmarkError

    with pytest.raises(BenchmarkError, match="valid options: .*eps"):
        build_defense("metric-at", epz="1")
    with pytest.raises(BenchmarkError, match="valid parts: diffusion"):
        build_defense("ddid", ablate=("fnes", "magic"))


def test_ddid_ablation_changes_seen_attacks():
    assert build_defense("ddid").seen_attacks() == ("fna", "sma")
    assert build_defense("ddid", ablate=("self-meta",)).seen_attacks() == ("fna",)
    assert build_defense("none").seen_attacks() == ()
