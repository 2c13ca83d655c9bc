"""Timings (pytest-benchmark): run with `pytest tests/benchmarks --benchmark-only`.

Ratios are measured inside one run and stored in each benchmark's extra_info.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from attacks import ATTACKS, AttackContext, build_attack
from benchmark.metrics import evaluate
from benchmark.models import BACKBONES, ModelConfig, ReidModel
from benchmark.throughput import training_rate
from defenses import DEFENSES, DefendedModel

GRADIENT_ATTACKS = [n for n in ATTACKS.names() if ATTACKS.meta(n)["family"] in ("gradient", "guided")
                    and ATTACKS.meta(n).get("backend") != "art"]


def seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(fn, repeats=3):
    fn()
    return min(seconds(fn) for _ in range(repeats))


def test_evaluator_market_size(benchmark):
    g = torch.Generator().manual_seed(0)
    nq, ng = 3368, 19732
    q_pids, g_pids = torch.randint(1, 752, (nq,), generator=g), torch.randint(-1, 752, (ng,), generator=g)
    q_cams, g_cams = torch.randint(0, 6, (nq,), generator=g), torch.randint(0, 6, (ng,), generator=g)
    dist = torch.rand(nq, ng, generator=g)
    argsort_s = best_of(lambda: np.argsort(dist.numpy(), axis=1), repeats=1)
    benchmark.pedantic(evaluate, args=(dist, q_pids, g_pids, q_cams, g_cams), rounds=3, iterations=1)
    ours = benchmark.stats.stats.median
    benchmark.extra_info.update(numpy_argsort_s=argsort_s, ratio_argsort_over_ours=argsort_s / ours)


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_feature_extraction(benchmark, backbone):
    model = ReidModel(ModelConfig(backbone, 10)).eval()
    x = torch.rand(32, 3, 128, 64)
    with torch.no_grad():
        benchmark.pedantic(model.embed, args=(x,), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images_per_second"] = 32 / benchmark.stats.stats.median


def _setup(batch=32):
    torch.manual_seed(0)
    model = DefendedModel(ReidModel(ModelConfig("reidnet-s", 10))).eval()
    x = torch.rand(batch, 3, 128, 64)
    pids = torch.arange(batch) % 8
    with torch.no_grad():
        feats = model.embed(x)
    return model, x, AttackContext(query_pids=pids, query_feats=feats)


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_attack_overhead(benchmark, name):
    """K attack iterations against K forward+backward passes of the same model and batch (target >= 0.95)."""
    model, x, ctx = _setup()
    k = 8
    steps = {"steps": k} if name != "fgsm" else {}
    attack = build_attack(name, model, **steps)
    iters = k if name != "fgsm" else 1

    def fwd_bwd():
        for _ in range(iters):
            xr = x.clone().requires_grad_(True)
            torch.autograd.grad(model.embed(xr).pow(2).sum(), xr)

    # Interleave the two timings so drift in machine load hits both alike; the ratio uses the minima.
    fwd_bwd()
    attack.run(x, ctx)  # warm-up
    attack_times, reference_times = [], []
    for _ in range(5):
        reference_times.append(seconds(fwd_bwd))
        attack_times.append(seconds(lambda: attack.run(x, ctx)))
    benchmark.pedantic(attack.run, args=(x, ctx), rounds=1, iterations=1)
    benchmark.extra_info.update(fwd_bwd_s=min(reference_times), attack_s=min(attack_times),
                                ratio=min(reference_times) / min(attack_times))


def test_art_pgd_against_native_pgd(benchmark):
    model, x, ctx = _setup()
    native = build_attack("ifgsm", model, steps=8)
    native_s = best_of(lambda: native.run(x, ctx))
    art = build_attack("art-pgd", model, steps=8)
    benchmark.pedantic(art.run, args=(x, ctx), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(native_s=native_s, ratio_art_over_native=benchmark.stats.stats.min / native_s)


def test_query_bb_queries_per_image(benchmark):
    model, x, ctx = _setup()
    attack = build_attack("query-bb", model, queries=50)
    benchmark.pedantic(attack.run, args=(x, ctx), rounds=2, iterations=1)
    benchmark.extra_info["queries_per_image"] = ctx.report["queries_per_image"]
    assert ctx.report["queries_per_image"] == 50


@pytest.mark.parametrize("defense", DEFENSES.names())
def test_training_step(benchmark, defense):
    rate = benchmark.pedantic(training_rate, args=(defense, "reidnet-s", 32, torch.device("cpu"), 2), rounds=1,
                              iterations=1)
    benchmark.extra_info["images_per_second"] = rate[0]
