"""Every registered defense honours the contract (timm's tests/test_models.py pattern)."""

from __future__ import annotations

import json

import pytest
import torch

from attacks import ATTACKS
from benchmark.models import ModelConfig, ReidModel
from benchmark.training import TrainConfig
from defenses import DEFENSES, build_defense

FAST_OPTIONS = {"ddid": {"train_steps": 2}}


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
        assert defense.attacked_with == "bpda"
        x_req = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(transform(x_req).sum(), x_req)
        assert torch.allclose(grad, torch.ones_like(grad)), "BPDA must pass gradients straight through"
    model.eval()
    emb = model.embed(x)
    model.save(tmp_path / name)
    again = ReidModel.load(tmp_path / name).eval()
    assert torch.allclose(again.embed(x), emb, atol=1e-5)
    assert not list(tmp_path.glob(f"{name}/*.pt")) and not list(tmp_path.glob(f"{name}/*.pkl"))


def test_unknown_defense_option_names_valid_ones():
    from benchmark.errors import BenchmarkError

    with pytest.raises(BenchmarkError, match="valid options: .*eps"):
        build_defense("metric-at", epz="1")
    with pytest.raises(BenchmarkError, match="valid parts: diffusion"):
        build_defense("ddid", ablate=("fnes", "magic"))


def test_ddid_ablation_changes_seen_attacks():
    assert build_defense("ddid").seen_attacks() == ("fna", "sma")
    assert build_defense("ddid", ablate=("self-meta",)).seen_attacks() == ("fna",)
    assert build_defense("none").seen_attacks() == ()
