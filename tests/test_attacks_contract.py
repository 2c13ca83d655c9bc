"""Every registered attack honours the contract (timm's tests/test_models.py pattern)."""

from __future__ import annotations

import pytest
import torch

from attacks import ATTACKS, AttackContext, build_attack
from benchmark.core.enums import Knowledge
from benchmark.core.metrics import evaluate_features
from benchmark.models import ModelConfig, ReidModel, extract_embeddings
from benchmark.run.validity import check_adversarial
from defenses import DefendedModel

APGD = {name: {"steps": 5} for name in ATTACKS.names("apgd-*")}
FAST_OPTIONS = {"query-bb": {"queries": 12}, "muap": {"steps": 3}, **APGD}
SLOW_TEST_OPTIONS = {"query-bb": {"queries": 50}, **{name: {"steps": 20} for name in APGD}}


def make_context(ws, model, n=None, seed=0):
    n = n or len(ws.query)
    qf = extract_embeddings(model, ws.query.images[:n])
    gf = extract_embeddings(model, ws.gallery.images)
    return AttackContext(query_pids=ws.query.pids[:n], query_feats=qf, seed=seed, train_images=ws.train.images,
                         train_pids=ws.train.pids, target_backbone="reidnet-s", surrogate=seeded_surrogate,
                         gallery_feats=gf, gallery_pids=ws.gallery.pids, query_camids=ws.query.camids[:n],
                         gallery_camids=ws.gallery.camids)


def seeded_surrogate(backbone, seed_offset=0):
    torch.manual_seed(1 + seed_offset)  # a real run loads a cached trained surrogate; here a fixed random one
    return ReidModel(ModelConfig(backbone, 5, 64, 32)).eval()


@pytest.fixture(scope="module")
def small_model(tiny_ws):
    torch.manual_seed(0)
    model = ReidModel(ModelConfig("reidnet-s", len(torch.unique(tiny_ws.train.pids)), 64, 32))
    return DefendedModel(model)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_contract(name, tiny_ws, small_model):
    images = tiny_ws.query.images[:10]
    model = small_model.train()  # the attack must switch to eval and restore train mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = make_context(tiny_ws, model, 10)
    attack = build_attack(name, model, **FAST_OPTIONS.get(name, {}))
    adv = attack.run(images, ctx)
    clean = images.float() / 255
    assert adv.shape == clean.shape and adv.dtype == torch.float32
    check_adversarial(adv, clean, attack.options.eps, name)
    assert (adv - clean).abs().max() > 0, f"{name} did not perturb anything"
    again = build_attack(name, model, **FAST_OPTIONS.get(name, {})).run(images, make_context(tiny_ws, model, 10))
    assert torch.equal(adv, again), f"{name} is not deterministic for a fixed seed"
    assert model.training, f"{name} did not restore the model's train mode"
    for key, value in model.state_dict().items():
        if "running" in key or "num_batches" in key:
            continue
        assert torch.equal(value, before[key]), f"{name} changed {key}"
    assert all(p.grad is None for p in model.parameters()), f"{name} leaked gradients into the model"
    meta = ATTACKS.meta(name)
    assert meta.family and meta.knowledge and meta.summary


def test_unknown_attack_lists_valid_names_and_closest():
    from benchmark.core.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="Did you mean 'fna'.*Valid attacks: .*sma"):
        ATTACKS.resolve("fnaa")


def test_resolve_lists_and_wildcards():
    assert ATTACKS.resolve("fna,sma") == ["fna", "sma"]
    assert ATTACKS.resolve("art-*") == ["art-feature", "art-pgd"]
    assert set(ATTACKS.resolve("all")) == set(ATTACKS.names())


@pytest.mark.slow
def test_white_box_attacks_halve_map_of_trained_model(trained_ws, trained_none):
    """Against an undefended trained model every white-box attack cuts mAP at least in half."""
    model = DefendedModel(trained_none[0]).eval()
    ws = trained_ws
    gf = extract_embeddings(model, ws.gallery.images)

    def score(images):
        qf = extract_embeddings(model, images)
        return evaluate_features(qf, gf, ws.query.pids, ws.gallery.pids, ws.query.camids, ws.gallery.camids).mAP

    clean = score(ws.query.images)

    def surrogate(backbone, seed_offset=0):  # shortly trained undefended surrogates keep the test inside CI's budget
        import dataclasses

        from benchmark.run.checkpoints import train_or_load
        from benchmark.run.spec import ModelSpec
        from tests.conftest import DEFAULT_DATA, tiny_config

        spec = tiny_config(**DEFAULT_DATA, epochs=10)
        spec = dataclasses.replace(spec, seed=spec.seed + seed_offset)
        return train_or_load(spec.defense, spec, ws, torch.device("cpu"), ModelSpec(backbone))[0]

    assert clean > 40, f"undefended model too weak to test attacks (mAP {clean:.1f})"
    report = {}
    for name in ATTACKS.names():
        ctx = make_context(ws, model)
        ctx.surrogate = surrogate
        adv = build_attack(name, model, **SLOW_TEST_OPTIONS.get(name, {})).run(ws.query.images, ctx)
        report[name] = score(adv)
        if ATTACKS.meta(name).knowledge == Knowledge.WHITE_BOX.value:
            assert report[name] <= clean / 2, f"{name}: mAP {clean:.1f} -> {report[name]:.1f}"
    print("clean", round(clean, 2), {k: round(v, 2) for k, v in report.items()})
