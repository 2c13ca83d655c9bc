"""Attack unit test for retrieval: with an adversarial example planted inside the ε-ball, the standard suite must
find it on every query; behind a transform that masks gradients it must not (so the test can fail)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.run.checkpoints import embed, train_or_load
from benchmark.run.execute import execute
from benchmark.run.outcome import Runtime
from benchmark.run.planted import SHARE, PlantedModel, planted_report, score_planted
from benchmark.run.spec import external_model_spec, make_spec
from tests.conftest import TINY_SYNTHPED, tiny_config

EPS = 8 / 255


class MaskedRounding(nn.Module):
    """Rounds to the 8-bit grid: the identity on the data's images and on the planted ones, with zero gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 255) / 255


class Blurred(nn.Module):
    """The ReID model behind a wide blur: little that an ε-bounded perturbation does survives it, so the only
    large damage within ε is the planted one (as on a robust model), and no attack finds it by accident."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(nn.functional.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The test-time embedding (what extraction calls)."""
        return self(x)


@pytest.fixture(scope="module")
def undefended(tiny_ws):
    spec = tiny_config()
    net, _ = train_or_load(spec.defense, spec, tiny_ws, torch.device("cpu"))
    blurred = Blurred(net).eval()
    gallery = embed(blurred, tiny_ws.gallery.images, spec, torch.device("cpu"))
    return blurred, gallery[tiny_ws.gallery.pids == 0].mean(0)  # the distractors: wrong for every query


def _suite_against(model: nn.Module, ws, suite: str) -> tuple:
    size = tuple(ws.size)
    spec = make_spec(attacks=suite, dataset_options=dict(TINY_SYNTHPED), height=size[0], width=size[1],
                     external=external_model_spec(model, "module:tests.test_planted", "planted"))
    outcome = execute(spec, Runtime(device="cpu", progress=False), model=model, workspace=ws)
    planted = score_planted(lambda images: embed(outcome.model, images, spec, torch.device("cpu")),
                            ws.query.float_images(), outcome.gallery_feats, (ws.query.pids, ws.gallery.pids),
                            (ws.query.camids, ws.gallery.camids), EPS)
    (suite,) = [r for r in outcome.aggregates if r.attack == spec.suite]
    return outcome, planted_report(outcome.clean.per_query_ap, planted, {suite.attack: suite.metrics.per_query_ap})


@pytest.mark.parametrize("suite", ["standard-v1", "standard-v2"])
@pytest.mark.parametrize("masked", [False, True], ids=["gradients", "masked"])
def test_the_suite_finds_a_planted_adversarial_example_unless_gradients_are_masked(undefended, tiny_ws, masked,
                                                                                   suite):
    net, target = undefended
    model = PlantedModel(net, target, EPS, tuple(tiny_ws.size), MaskedRounding() if masked else None).eval()
    outcome, report = _suite_against(model, tiny_ws, suite)
    plain = embed(net, tiny_ws.query.images, tiny_config(), torch.device("cpu"))
    assert abs(outcome.clean.mAP - _map(plain, outcome, tiny_ws)) < 0.1  # clean inputs score as before
    assert int(report.tested.sum()) >= 0.5 * int((~torch.isnan(report.clean_ap)).sum())  # the plant does damage
    found = report.found(suite)
    if masked:
        assert found < 0.5, f"the suite reached {SHARE:.0%} of the planted damage on {found:.0%} of the queries " \
                            "through a transform with zero gradients"
    else:
        assert found == 1.0, f"the suite reached {SHARE:.0%} of the planted damage on only {found:.0%} of the queries"


def _map(query_feats: torch.Tensor, outcome, ws) -> float:
    from benchmark.core.metrics import evaluate_features

    return evaluate_features(query_feats, outcome.gallery_feats, ws.query.pids, ws.gallery.pids, ws.query.camids,
                             ws.gallery.camids).mAP
