"""`validate`: every built-in defense passes the admission rules; broken ones fail the rule they break."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark.run.admission import RULES, SMALL_SYNTHPED, validate_defense
from defenses import DEFENSES, Defense, build_defense

REPO = Path(__file__).resolve().parents[1]
FAST_OPTIONS = {"ddid": {"train_steps": 2, "sample_steps": 2}}


@pytest.mark.parametrize("name", DEFENSES.names())
def test_builtin_defense_passes_every_rule(name):
    report = validate_defense(name, build_defense(name, **FAST_OPTIONS.get(name, {})))
    assert [r.rule for r in report.results] == [r.name for r in RULES]
    assert report.passed, report.markdown()


class Quantize(nn.Module):
    """Rounds to 4 levels with no gradient and no declared surrogate: masks every gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 3) / 3


class Noise(nn.Module):
    """Adds fresh noise on every call, in eval mode too, without declaring EOT."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 0.05 * torch.randn_like(x)).clamp(0, 1)


class Counter(nn.Module):
    """Counts its calls in a buffer: anything that runs the model changes the model's state."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


class Shatter(nn.Module):
    """Moves each pixel by under 1/255 with a gradient whose sign flips from pixel to pixel (shattered gradients,
    Athalye et al. 2018): finite and non-zero, yet useless to a gradient attack."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = 4 * 255.0
        return (x + 3 * torch.sin(k * x) / k).clamp(0, 1)


class MaskedGradients(Defense):
    """A transform with zero gradients everywhere."""

    def transform(self) -> nn.Module:
        return Quantize()


class Shattered(Defense):
    """A transform with shattered gradients: it passes the input-gradients rule, not the planted example."""

    def transform(self) -> nn.Module:
        return Shatter()


class Randomised(Defense):
    """A randomised transform that does not declare EOT."""

    def transform(self) -> nn.Module:
        return Noise()


class Stateful(Defense):
    """A transform whose state changes when attacked."""

    def transform(self) -> nn.Module:
        return Counter()


class PeeksAtTest(Defense):
    """Loads the test split during training (and then trains normally)."""

    def fit(self, model, train, cfg, device):  # noqa: ANN001, ANN201 - the Defense signature
        from benchmark.run.spec import make_spec
        from benchmark.run.workspace import load_workspace

        load_workspace(make_spec(dataset_options=SMALL_SYNTHPED, height=64, width=32))
        return super().fit(model, train, cfg, device)


@pytest.mark.parametrize(("defense", "rule", "passes"), [
    (MaskedGradients(), "input-gradients", ()),
    (Randomised(), "deterministic-eval", ()),
    (Stateful(), "attack-integrity", ()),
    (PeeksAtTest(), "data-isolation", ()),
    (Shattered(), "planted-example", ("input-gradients",)),
])
def test_broken_defense_fails_the_rule_it_breaks(defense, rule, passes):
    report = validate_defense("broken", defense, rules=("trains", rule, *passes))
    assert [r.rule for r in report.results] == [r.name for r in RULES if r.name in ("trains", rule, *passes)]
    assert report.failed() == [rule], report.markdown()


def test_validate_cli_writes_the_report(tmp_path):
    out = tmp_path / "none.json"
    proc = subprocess.run([sys.executable, "-m", "benchmark", "validate", "--defense", "none", "--report", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["passed"] and [r["rule"] for r in report["rules"]] == [r.name for r in RULES]
    assert all(f"PASS  {r.name}" in proc.stdout for r in RULES)


@pytest.mark.parametrize(("args", "message"), [
    (["--defense", "nope"], "unknown defense"),
    (["--defense", "none", "--report", "/no/such/folder/r.md"], "does not exist"),
    (["--defense", "none", "--rule", "planted"], "not a rule; use one of"),
])
def test_validate_cli_rejects_bad_input_in_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "benchmark", "validate", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert message in (proc.stderr + proc.stdout).lower()
