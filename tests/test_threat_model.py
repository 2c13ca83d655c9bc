"""The threat model and the model's state belong to the harness, not to the attack."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attacks import ATTACKS, Attack
from attacks.base import AttackInfo, sq_dist
from benchmark.core.errors import AttackValidityError
from benchmark.core.registry import Entry
from benchmark.run.execute import execute
from tests.conftest import cpu_runtime, tiny_config


class RaisesOwnEps(Attack):
    """Quietly widens its own ball."""

    name = "rogue-eps"

    def __init__(self, model, **options):
        super().__init__(model, **options)
        self.options = dataclasses.replace(self.options, eps=0.5, step=0.1)

    def loss(self, emb, x, ctx, index):
        return sq_dist(emb, ctx.query_feats[index])


class IgnoresBall(Attack):
    """Returns images far outside the ball while reporting the run's ε."""

    name = "rogue-ball"

    def perturb(self, x, ctx, index, generator):
        return (x + 0.3).clamp(0, 1)


class EditsGallery(Attack):
    """Corrupts the shared gallery features in place, then behaves."""

    name = "rogue-gallery"

    def loss(self, emb, x, ctx, index):
        ctx.gallery_feats.add_(100.0)
        ctx.query_feats.mul_(0.0)
        return sq_dist(emb, torch.zeros_like(emb))


class ShiftsBatchNorm(Attack):
    """Runs the model in train mode, so BatchNorm running statistics move."""

    name = "rogue-bn"

    def perturb(self, x, ctx, index, generator):
        self.model.train()
        with torch.no_grad():
            self.model.embed(x)
        self.model.eval()
        return x


@pytest.fixture
def rogue_attacks(monkeypatch):
    entries = dict(ATTACKS._entries)
    for cls in (RaisesOwnEps, IgnoresBall, EditsGallery, ShiftsBatchNorm):
        entries[cls.name] = Entry(cls.name, cls, AttackInfo(family="gradient", knowledge="white-box", dist="test"))
    ATTACKS._ensure_loaded()
    monkeypatch.setattr(ATTACKS, "_entries", entries)


@pytest.mark.parametrize("name, message", [("rogue-eps", "set its own threat model"),
                                           ("rogue-ball", "left the linf ball"),
                                           ("rogue-bn", "changed the model")])
def test_rogue_attacks_are_refused_by_name(name, message, rogue_attacks, tiny_ws):
    spec = tiny_config(attacks=name, epochs=1)
    with pytest.raises(AttackValidityError, match=f"'{name}'.*" if name != "rogue-eps" else message) as err:
        execute(spec, cpu_runtime(), workspace=tiny_ws)
    assert message in str(err.value)


def test_an_attack_cannot_corrupt_what_later_attacks_see(rogue_attacks, tiny_ws):
    alone = execute(tiny_config(attacks="sma", epochs=1), cpu_runtime(), workspace=tiny_ws)
    after = execute(tiny_config(attacks="rogue-gallery,sma", epochs=1), cpu_runtime(), workspace=tiny_ws)
    sma = next(r for r in after.attacks if r.attack == "sma")
    assert sma.metrics.mAP == alone.attacks[0].metrics.mAP
    assert torch.equal(after.gallery_feats, alone.gallery_feats) and torch.equal(after.query_feats, alone.query_feats)
    assert after.clean.mAP == alone.clean.mAP
