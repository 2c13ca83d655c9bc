"""A third-party package adds a defense and an attack through entry points, without editing this repo."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import cpu_runtime, tiny_config

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
from dataclasses import dataclass

import torch

from attacks import Attack, register_attack
from attacks.base import sq_dist
from benchmark.core.training import id_loss_and_triplet
from defenses import Defense, register_defense
from defenses.adversarial import self_metric_pgd


@dataclass(frozen=True)
class Options:
    eps: float = 4 / 255
    steps: int = 2


@register_defense("tiny-self-at", paper="test plugin")
class TinySelfAT(Defense):
    """Adversarial training on SMA-style examples (a plugin)."""

    trains_with = ("sma",)
    Options = Options

    def train_step(self, model, x, y, ctx):
        x_adv = self_metric_pgd(model, x, self.options.eps, self.options.eps / 2, self.options.steps, ctx.generator)
        loss = id_loss_and_triplet(model, x_adv, y, ctx)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ctx.optimizer.step()
        return {"loss": loss.item()}


@register_attack("tiny-push", paper="test plugin")
class TinyPush(Attack):
    """Push away from the clean embedding (a plugin)."""

    def loss(self, emb, x, ctx, index):
        return sq_dist(emb, ctx.query_feats[index].to(emb.device))
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "rrb-tiny-plugin"
version = "0.1"

[tool.setuptools]
packages = ["rrb_tiny_plugin"]

[project.entry-points."reid_robustness_bench.defenses"]
tiny-self-at = "rrb_tiny_plugin"

[project.entry-points."reid_robustness_bench.attacks"]
tiny-push = "rrb_tiny_plugin"
'''


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    (root / "src" / "rrb_tiny_plugin").mkdir(parents=True)
    (root / "src" / "rrb_tiny_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (root / "src" / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(root / "src")], check=True)
    return target


@pytest.mark.slow
def test_plugin_appears_in_list(installed_plugin):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed_plugin), str(REPO)])}
    out = subprocess.run([sys.executable, "-m", "benchmark", "list"], env=env, capture_output=True, text=True,
                         check=True)
    assert "tiny-self-at" in out.stdout and "tiny-push" in out.stdout


@pytest.mark.slow
def test_plugin_runs_through_the_harness(installed_plugin, tiny_ws, monkeypatch):
    from attacks import ATTACKS
    from benchmark.run.execute import execute
    from defenses import DEFENSES

    monkeypatch.syspath_prepend(str(installed_plugin))
    importlib.invalidate_caches()
    for registry in (ATTACKS, DEFENSES):
        monkeypatch.setattr(registry, "_loaded", False)
    outcome = execute(tiny_config(defense="tiny-self-at", attacks="tiny-push,sma", epochs=1), cpu_runtime(),
                      workspace=tiny_ws)
    tags = {r.attack: r.seen.value for r in outcome.attacks}
    assert tags == {"tiny-push": "unseen", "sma": "seen"}
    assert 0 <= outcome.clean.mAP <= 100
