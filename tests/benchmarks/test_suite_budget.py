"""The suite's budget: `--attack standard-v2` against the three single attacks `fna,sma,ifgsm`, on the same trained
undefended model and tiny synthped, timed interleaved with an empty attack cache each time
(`pytest tests/benchmarks/test_suite_budget.py --benchmark-only`; target: the suite within 1.5x; ratios and the
suite's passes per attacked query in extra_info)."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from benchmark.run.checkpoints import train_or_load
from benchmark.run.execute import execute
from benchmark.run.outcome import Runtime
from benchmark.run.spec import external_model_spec, make_spec
from tests.conftest import TINY_SYNTHPED, tiny_config

SINGLES = "fna,sma,ifgsm"


class Embedder(nn.Module):
    """The trained model as a user's model: images in, embeddings out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(x)


def test_standard_v2_against_three_single_attacks(benchmark, tiny_ws, tmp_path, monkeypatch):
    spec = tiny_config()
    net = Embedder(train_or_load(spec.defense, spec, tiny_ws, torch.device("cpu"))[0]).eval()
    size = tuple(tiny_ws.size)
    rounds = iter(range(1000))

    def attack(attacks: str):
        monkeypatch.setenv("RRB_CACHE_DIR", str(tmp_path / f"cache-{next(rounds)}"))  # no cell comes from a cache
        run = make_spec(attacks=attacks, dataset_options=dict(TINY_SYNTHPED), height=size[0], width=size[1],
                        external=external_model_spec(net, "module:tests.benchmarks", "trained-none"))
        start = time.perf_counter()
        outcome = execute(run, Runtime(device="cpu", progress=False), model=net, workspace=tiny_ws)
        return time.perf_counter() - start, outcome

    pairs = [(attack(SINGLES)[0], attack("standard-v2")) for _ in range(3)]
    singles_s = float(np.median([s for s, _ in pairs]))
    suite_s = float(np.median([o[0] for _, o in pairs]))
    outcome = pairs[-1][1][1]
    members = outcome.aggregates[0].report["members"]
    benchmark.pedantic(attack, args=("standard-v2",), rounds=1, iterations=1)
    benchmark.extra_info.update(
        singles_s=singles_s, suite_s=suite_s, ratio_suite_over_singles=suite_s / singles_s,
        passes_per_query={m["member"]: m.get("report", {}).get("passes_per_query") for m in members},
        attacked={m["member"]: m["attacked"] for m in members})
