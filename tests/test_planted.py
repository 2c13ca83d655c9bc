"""Attack unit test for retrieval: with an adversarial example planted inside the ε-ball behind a defense's
transform, the standard suite must find it on every query it damages. Every built-in defense passes it as the
`planted-example` rule of `validate` (tests/test_admission.py), where a defense with shattered gradients fails
it; here: the plant itself, and the other suite."""

from __future__ import annotations

import pytest
import torch

from benchmark.run.checkpoints import train_or_load
from benchmark.run.planted import (
    GATE_LOGIT,
    SHARE,
    Blurred,
    PlantedModel,
    design_plant,
    planted_check,
    planted_images,
    response,
)
from defenses import build_defense
from tests.conftest import TINY_SYNTHPED, tiny_config

EPS = 8 / 255


@pytest.fixture(scope="module")
def undefended(tiny_ws):
    spec = tiny_config()
    net, _ = train_or_load(spec.defense, spec, tiny_ws, torch.device("cpu"))
    return net.eval()


@pytest.mark.parametrize("name", ["none", "jpeg", "squeeze", "smooth"])
def test_the_plant_survives_each_transform_and_leaves_clean_images_alone(tiny_ws, name):
    transform = build_defense(name).transform() or torch.nn.Identity()
    queries = tiny_ws.query.float_images()
    everyone = torch.cat([queries, tiny_ws.gallery.float_images()])
    plant = design_plant(transform, everyone, queries, EPS)
    assert plant is not None, f"no plant survives {name}"
    planted = planted_images(queries, EPS, plant.pattern)
    assert (planted - queries).abs().max() <= EPS + 1e-7 and planted.min() >= 0 and planted.max() <= 1
    gate = lambda images: torch.sigmoid(plant.scale * (response(transform(images), plant.pattern)  # noqa: E731
                                                        - plant.threshold))
    logit = torch.logit(torch.tensor(GATE_LOGIT).sigmoid())
    assert gate(everyone).max() <= torch.sigmoid(-logit) + 1e-6  # clean embeddings move by at most 0.1 % of the way
    assert gate(planted).min() >= torch.sigmoid(logit) - 1e-6


def test_the_planted_model_is_the_reference_until_the_probe_fires(tiny_ws, undefended):
    queries = tiny_ws.query.float_images(slice(0, 8))
    plant = design_plant(torch.nn.Identity(), tiny_ws.query.float_images(), queries, EPS)
    target = torch.randn(undefended.embed(queries[:1]).shape[1])
    reference = PlantedModel(Blurred(undefended), None, plant).eval()
    planted = PlantedModel(Blurred(undefended), target, plant).eval()
    with torch.no_grad():
        assert torch.allclose(planted.embed(queries), reference.embed(queries), atol=1e-3 * target.norm())
        moved = planted.embed(planted_images(queries, EPS, plant.pattern))
    assert torch.allclose(moved, target.expand_as(moved), atol=1e-2 * target.norm())
    x = queries.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(reference.attack_embed(x).sum(), x)
    assert (grad[:, :, : x.shape[2] // 2] == 0).all(), "the model must not see the probe's region"


@pytest.mark.parametrize("suite", ["standard-v1", "standard-v2"])  # v3: every defense in test_admission.py
def test_the_suite_finds_the_planted_example(tiny_ws, undefended, suite):
    check = planted_check(build_defense("none"), undefended, tiny_ws, TINY_SYNTHPED, torch.device("cpu"),
                          suite=suite)
    assert check.clean_gate <= 1e-3  # clean inputs score as before
    assert check.damaged >= 6, "the plant must damage queries for the test to mean anything"
    assert check.problem is None, check.detail()
    assert check.found == check.damaged and (check.report.reached[suite][check.report.tested] >= SHARE).all()
