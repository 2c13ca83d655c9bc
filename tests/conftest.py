"""Shared fixtures: a private cache, a tiny synthped workspace, tiny and trained models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
TINY_SYNTHPED = {"num_ids": "40", "max_images": "12", "distractors": "8", "junk": "4", "height": "64", "width": "32"}


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session gets its own cache so tests never reuse a developer's checkpoints."""
    path = tmp_path_factory.mktemp("rrb-cache")
    old = os.environ.get("RRB_CACHE_DIR")
    os.environ["RRB_CACHE_DIR"] = str(path)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield path
    if old is None:
        os.environ.pop("RRB_CACHE_DIR", None)
    else:
        os.environ["RRB_CACHE_DIR"] = old


DEFAULT_DATA = {"dataset_options": {}, "height": 128, "width": 64}  # synthped as the benchmark runs it


def tiny_config(**overrides):
    """A RunSpec on the tiny synthped (64x32), built through the same validation as the command line."""
    from benchmark.run.spec import make_spec

    base = dict(dataset_options=dict(TINY_SYNTHPED), height=64, width=32)
    base.update(overrides)
    return make_spec(**base)


def cpu_runtime():
    """Runtime for tests: CPU, no progress bars."""
    from benchmark.run.outcome import Runtime

    return Runtime(device="cpu", progress=False)


@pytest.fixture(scope="session")
def tiny_ws():
    from benchmark.run.workspace import load_workspace

    return load_workspace(tiny_config())


@pytest.fixture(scope="session")
def trained_ws():
    """The default synthped at 128x64, the data set the benchmark's claims are made on."""
    from benchmark.run.workspace import load_workspace

    return load_workspace(tiny_config(**DEFAULT_DATA))


@pytest.fixture(scope="session")
def trained_none(trained_ws):
    """The default undefended reidnet-s (30 epochs, ~2 minutes on 2 cores)."""
    from benchmark.run.checkpoints import train_or_load

    spec = tiny_config(**DEFAULT_DATA)
    model, info = train_or_load(spec.defense, spec, trained_ws, torch.device("cpu"))
    return model, info


def shared_data(name: str) -> Path:
    path = SHARED / "data" / name
    if not path.is_dir():
        pytest.skip(f"../shared/data/{name} is not available")
    return path


def pytest_ignore_collect(collection_path, config):
    """tests/benchmarks/ holds timings, not checks: collected only with --benchmark-only."""
    if "benchmarks" in Path(collection_path).parts and not config.getoption("benchmark_only", default=False):
        return True
    return None
