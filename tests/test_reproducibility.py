"""Same command, seed and thread count -> the same checkpoint bytes; changed defense code -> retrained."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

TRAIN = """
import hashlib, sys, torch
from benchmark.core.allocator import tune_allocator
tune_allocator()
torch.set_num_threads(2)
torch.use_deterministic_algorithms(True, warn_only=True)
from benchmark.run.checkpoints import train_or_load
from benchmark.run.workspace import load_workspace
from benchmark.run.spec import make_spec
from tests.conftest import TINY_SYNTHPED as TINY
spec = make_spec(defense=sys.argv[1], epochs=2, height=64, width=32, dataset_options=TINY)
model, info = train_or_load(spec.defense, spec, load_workspace(spec), torch.device("cpu"))
assert not info.cached
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode() + tensor.contiguous().numpy().tobytes())
print(digest.hexdigest())
"""


@pytest.mark.slow
@pytest.mark.parametrize("defense", ["metric-at", "ddid"])
def test_training_twice_in_separate_processes_gives_identical_weights(defense, tmp_path):
    """Twice from empty caches, once with glibc's heap defaults and once with the run's tuned heap: the allocator
    moves buffers around (alignment included) and must not move a bit."""
    digests = []
    for i, heap in enumerate(("system", "tuned")):
        env = {**os.environ, "PYTHONPATH": str(REPO), "RRB_CACHE_DIR": str(tmp_path / f"cache{i}"), "RRB_MALLOC": heap}
        script = TRAIN.replace("epochs=2", "epochs=1") if defense == "ddid" else TRAIN
        if defense == "ddid":
            script = script.replace("spec = make_spec(defense=sys.argv[1],",
                                    "spec = make_spec(defense=sys.argv[1], defense_options={'train_steps': '20'},")
        out = subprocess.run([sys.executable, "-c", script, defense], env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        digests.append(out.stdout.strip().splitlines()[-1])
    assert digests[0] == digests[1]


PLUGIN = '''
from defenses import Defense, register_defense


@register_defense("code-probe")
class CodeProbe(Defense):
    """A defense whose source the test edits."""

    default_epochs = 1
'''


@pytest.mark.slow
def test_changed_defense_code_retrains(tmp_path, monkeypatch, tiny_ws):
    from benchmark.run.checkpoints import train_or_load
    from defenses import DEFENSES
    from tests.conftest import tiny_config

    package = tmp_path / "code_probe"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    entries = dict(DEFENSES._entries)
    monkeypatch.setattr(DEFENSES, "_entries", entries)
    importlib.import_module("code_probe")
    spec = tiny_config(defense="code-probe")
    first = train_or_load(spec.defense, spec, tiny_ws, torch.device("cpu"))[1]
    again = train_or_load(spec.defense, spec, tiny_ws, torch.device("cpu"))[1]
    assert again.cached and again.checkpoint_key == first.checkpoint_key
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN).replace('"""A defense whose source the test edits."""',
                                                                          '"""Documented anew."""  # a comment'))
    entries.pop("code-probe")
    importlib.reload(sys.modules["code_probe"])
    documented = train_or_load(spec.defense, spec, tiny_ws, torch.device("cpu"))[1]
    assert documented.cached, "docstrings and comments are not code: no retraining"
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN) + "\nSCALE = 2\n")
    entries.pop("code-probe")
    importlib.reload(sys.modules["code_probe"])
    changed = train_or_load(spec.defense, spec, tiny_ws, torch.device("cpu"))[1]
    assert not changed.cached and changed.checkpoint_key != first.checkpoint_key
    sys.modules.pop("code_probe", None)


def test_numerics_are_part_of_every_cache_key():
    from benchmark.core.device import numerics

    threads = torch.get_num_threads()
    try:
        a = numerics(torch.device("cpu"))
        torch.set_num_threads(1 if threads != 1 else 2)
        assert numerics(torch.device("cpu")) != a  # thread count changes float sums: another checkpoint
    finally:
        torch.set_num_threads(threads)
    assert a["torch"] == torch.__version__
