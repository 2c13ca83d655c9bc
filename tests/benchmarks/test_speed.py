"""Timings (pytest-benchmark): run with `pytest tests/benchmarks --benchmark-only`.

Ratios are measured inside one run and stored in each benchmark's extra_info.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
import torch

from attacks import ATTACKS, AttackContext, build_attack
from benchmark.core.metrics import evaluate, evaluate_features, pairwise_distance
from benchmark.models import BACKBONES, ModelConfig, ReidModel
from benchmark.run.execute import apply_runtime
from benchmark.run.outcome import Runtime
from benchmark.run.throughput import training_rate
from defenses import DEFENSES, DefendedModel

GRADIENT_ATTACKS = [n for n in ATTACKS.names() if ATTACKS.meta(n).family in ("gradient", "guided")
                    and ATTACKS.meta(n).backend != "art"]


def seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(fn, repeats=3):
    fn()
    return min(seconds(fn) for _ in range(repeats))


def per_query_sort_reference(dist, q_pids, g_pids, q_cams, g_cams):
    """torchreid's way: argsort each row, mask, cumulative precision (mAP only)."""
    d, qp, gp, qc, gc = (np.asarray(t) for t in (dist, q_pids, g_pids, q_cams, g_cams))
    aps = []
    for i in range(len(d)):
        order = np.argsort(d[i])
        keep = (gp[order] != -1) & ~((gp[order] == qp[i]) & (gc[order] == qc[i]))
        matches = gp[order][keep] == qp[i]
        if matches.any():
            positions = np.flatnonzero(matches)
            aps.append(np.mean(matches.cumsum()[positions] / (positions + 1.0)))
    return 100 * float(np.mean(aps))


def _cython_map(evaluate_cy, d, qp, gp, qc, gc) -> float:
    return 100 * float(evaluate_cy(d, qp, gp, qc, gc, 50)[1])


def torchreid_evaluator():
    """torchreid's compiled `evaluate_cy` when a build is importable, else the per-query sort above.

    pip's torchreid ships no compiled evaluator; build one from torchreid's `rank_cy.pyx` with Cython
    (`python setup.py build_ext --inplace` in its `rank_cylib` folder) and put it on PYTHONPATH.
    """
    for module in ("rank_cy", "torchreid.metrics.rank_cylib.rank_cy", "torchreid.reid.metrics.rank_cylib.rank_cy"):
        try:
            evaluate_cy = __import__(module, fromlist=["evaluate_cy"]).evaluate_cy
        except ImportError:
            continue
        return "torchreid evaluate_cy", functools.partial(_cython_map, evaluate_cy)
    return "per-query argsort (numpy)", per_query_sort_reference


def market_size_case(noise: float, dim: int = 256):
    """Market-1501's shape (3,368 x 19,732, 751 identities, 6 cameras, no junk: torchreid drops it on load).

    Embeddings are identity centres plus noise: 1.5 gives a trained model's ranking (mAP ~ 95), 2.5
    positives ranked deep (mAP ~ 10, as after an attack).
    """
    g = torch.Generator().manual_seed(0)
    nq, ng = 3368, 19732
    q_pids, g_pids = torch.randint(1, 752, (nq,), generator=g), torch.randint(1, 752, (ng,), generator=g)
    q_cams, g_cams = torch.randint(0, 6, (nq,), generator=g), torch.randint(0, 6, (ng,), generator=g)
    centres = torch.randn(752, dim, generator=g)
    qf = centres[q_pids] + noise * torch.randn(nq, dim, generator=g)
    gf = centres[g_pids] + noise * torch.randn(ng, dim, generator=g)
    return qf, gf, q_pids, g_pids, q_cams, g_cams


def interleaved(ours, reference, rounds: int = 3) -> tuple[float, float]:
    """Median seconds of `ours` and `reference`, timed alternately so drifting load hits both alike."""
    ours(), reference()  # warm-up
    pairs = [(seconds(ours), seconds(reference)) for _ in range(rounds)]
    return float(np.median([o for o, _ in pairs])), float(np.median([r for _, r in pairs]))


@pytest.mark.parametrize("noise", [1.5, 2.5], ids=["trained-model", "positives-deep"])
def test_evaluator_against_torchreid_market_size(benchmark, noise):
    """Same distance matrix, our evaluator against torchreid's (target: >= 6x on a trained model's matrix)."""
    qf, gf, qp, gp, qc, gc = market_size_case(noise)
    dist = pairwise_distance(qf, gf)
    name, reference = torchreid_evaluator()
    arrays = [t.numpy() for t in (dist, qp, gp, qc, gc)]
    ours_s, ref_s = interleaved(lambda: evaluate(dist, qp, gp, qc, gc), lambda: reference(*arrays))
    ours = benchmark.pedantic(evaluate, args=(dist, qp, gp, qc, gc), rounds=1, iterations=1)
    assert ours.mAP == pytest.approx(reference(*arrays), abs=1e-3)
    benchmark.extra_info.update(reference=name, reference_s=ref_s, ours_s=ours_s, mAP=ours.mAP,
                                ratio_reference_over_ours=ref_s / ours_s)


@pytest.mark.parametrize("noise", [1.5, 2.5], ids=["trained-model", "positives-deep"])
def test_evaluate_features_against_cdist_and_torchreid(benchmark, noise):
    """Embeddings to scores: ours (blockwise distances + scoring) against torch.cdist + torchreid (target >= 3x)."""
    qf, gf, qp, gp, qc, gc = market_size_case(noise)
    name, reference = torchreid_evaluator()
    arrays = [t.numpy() for t in (qp, gp, qc, gc)]
    ours_s, ref_s = interleaved(lambda: evaluate_features(qf, gf, qp, gp, qc, gc),
                                lambda: reference(torch.cdist(qf, gf).numpy(), *arrays))
    benchmark.pedantic(evaluate_features, args=(qf, gf, qp, gp, qc, gc), rounds=1, iterations=1)
    benchmark.extra_info.update(reference=f"torch.cdist + {name}", reference_s=ref_s, ours_s=ours_s,
                                ratio_reference_over_ours=ref_s / ours_s)


MSMT_MEMORY = """
import resource, sys, time, torch
torch.manual_seed(0)
nq, ng, dim = 11659, 82161, 64
qf, gf = torch.randn(nq, dim), torch.randn(ng, dim)
qp, gp = torch.randint(1, 3060, (nq,)), torch.randint(1, 3060, (ng,))
qc, gc = torch.randint(0, 15, (nq,)), torch.randint(0, 15, (ng,))
from benchmark.core.metrics import evaluate_features
evaluate_features(qf[:8], gf, qp[:8], gp, qc[:8], gc)  # warm-up: imports, thread pools
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
m = evaluate_features(qf, gf, qp, gp, qc, gc)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(seconds, (peak - base) / 1024, m.mAP)
"""


def test_evaluator_msmt_size_memory(benchmark):
    """11,659 x 82,161 (a 3.8 GB matrix in float32) scored blockwise: peak extra memory and time."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]

    def run():
        out = subprocess.run([sys.executable, "-c", MSMT_MEMORY], capture_output=True, text=True, check=True,
                             cwd=repo, env={**__import__("os").environ, "PYTHONPATH": str(repo)})
        return [float(v) for v in out.stdout.split()]

    seconds, extra_mb, _ = benchmark.pedantic(run, rounds=1, iterations=1)
    assert extra_mb < 1024, f"peak extra memory {extra_mb:.0f} MB"
    benchmark.extra_info.update(seconds=seconds, peak_extra_mb=extra_mb)


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_feature_extraction(benchmark, backbone):
    model = ReidModel(ModelConfig(backbone, 10)).eval()
    x = torch.rand(32, 3, 128, 64)
    with torch.no_grad():
        benchmark.pedantic(model.embed, args=(x,), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images_per_second"] = 32 / benchmark.stats.stats.median


def _setup(batch=32):
    # a run's process settings (heap, deterministic kernels: index_put and index_copy_ take their
    # deterministic paths), so the timings are those of a run
    apply_runtime(Runtime())
    torch.manual_seed(0)
    model = DefendedModel(ReidModel(ModelConfig("reidnet-s", 10))).eval()
    x = torch.rand(batch, 3, 128, 64)
    pids = torch.arange(batch) % 8
    gallery = torch.rand(4 * batch, 3, 128, 64)
    with torch.no_grad():
        feats, gallery_feats = model.embed(x), model.embed(gallery)
    # a gallery lets APGD score its iterates (AP per query, as in a real run) and feeds the margin loss
    return model, x, AttackContext(query_pids=pids, query_feats=feats, gallery_feats=gallery_feats,
                                   gallery_pids=torch.arange(4 * batch) % 8, query_camids=torch.zeros(batch).long(),
                                   gallery_camids=torch.ones(4 * batch).long())


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_attack_overhead(benchmark, name):
    """K attack iterations against K forward+backward passes of the same model and batch (target >= 0.95).

    Three ratios, all timed interleaved (minima over rounds): `ratio`, a whole K-iteration run (its random
    start and set-up included) against K forward+backward passes with a plain loss; `per_iteration_ratio`,
    one more iteration (a 3K-step run minus a K-step run, over 2K) against one pass, so fixed per-run costs
    drop out; `own_loss_ratio`, the run against K passes of the attack's own loss (`loss_and_gradient` on
    the whole batch): what the schedule adds to its loss (projection, momentum, best iterates, AP scoring).
    """
    model, x, ctx = _setup()
    k = 8
    steps = {"steps": k} if name != "fgsm" else {}
    attack = build_attack(name, model, **steps)
    longer = build_attack(name, model, steps=3 * k) if steps else None
    # APGD evaluates its starting point too: k + 1 losses and gradients
    apgd = int(getattr(attack.options, "schedule", "pgd") == "apgd")
    iters = 1 if name == "fgsm" else k + apgd
    index = torch.arange(len(x))

    def fwd_bwd():
        for _ in range(iters):
            xr = x.clone().requires_grad_(True)
            torch.autograd.grad(model.embed(xr).pow(2).sum(), xr)

    def own_loss():
        with torch.no_grad():
            x_adv = x + 0.01  # any point: the cost does not depend on it
        for _ in range(iters):
            attack.loss_and_gradient(x_adv, x, ctx, index)

    timed = {"fwd_bwd": fwd_bwd, "own_loss": own_loss, "attack": lambda: attack.run(x, ctx)}
    if longer is not None:
        timed["longer"] = lambda: longer.run(x, ctx)
    for fn in timed.values():  # warm-up
        fn()
    # Interleave the timings so drift in machine load hits all alike; the ratios use the minima.
    times = {key: [] for key in timed}
    for _ in range(5):
        for key, fn in timed.items():
            times[key].append(seconds(fn))
    best = {key: min(values) for key, values in times.items()}
    benchmark.pedantic(attack.run, args=(x, ctx), rounds=1, iterations=1)
    benchmark.extra_info.update(fwd_bwd_s=best["fwd_bwd"], attack_s=best["attack"],
                                ratio=best["fwd_bwd"] / best["attack"],
                                own_loss_ratio=best["own_loss"] / best["attack"])
    if longer is not None:
        per_iteration = (best["longer"] - best["attack"]) / (2 * k)
        benchmark.extra_info["per_iteration_ratio"] = best["fwd_bwd"] / iters / per_iteration


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


ALLOCATOR = """
import sys, time, torch
sys.path.insert(0, "tests/benchmarks")
from benchmark.core.allocator import tune_allocator
tuned = tune_allocator()
torch.set_num_threads(1)
from test_speed import _setup
from attacks import build_attack
model, x, ctx = _setup(128)
attack = build_attack("apgd-sap", model, steps=8)
net = model.model.train()
opt = torch.optim.SGD(net.parameters(), lr=0.01)
labels = torch.arange(64) % 10
def train_steps():
    for _ in range(4):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[:64]).logits, labels).backward()
        opt.step()
def timed(fn):
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return min(times)
print(int(tuned), timed(lambda: attack.run(x, ctx)), timed(train_steps))
"""


def test_allocator_tuning(benchmark):
    """glibc's default heap settings against `benchmark.core.allocator`'s (a process-wide choice, so one
    subprocess per setting, alternated): a 128-image APGD run (8 iterations) and 4 training steps of 64 images."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]

    def measure(choice):
        env = {**os.environ, "PYTHONPATH": str(repo), "RRB_MALLOC": choice}
        out = subprocess.run([sys.executable, "-c", ALLOCATOR], capture_output=True, text=True, check=True,
                             cwd=repo, env=env)
        return [float(v) for v in out.stdout.split()]

    runs = {"system": [], "tuned": []}
    for _ in range(2):
        for choice in runs:
            runs[choice].append(measure(choice))
    benchmark.pedantic(measure, args=("tuned",), rounds=1, iterations=1)
    assert [r[0] for r in runs["tuned"]] == [1.0, 1.0] and [r[0] for r in runs["system"]] == [0.0, 0.0]
    attack = {c: min(r[1] for r in rs) for c, rs in runs.items()}
    train = {c: min(r[2] for r in rs) for c, rs in runs.items()}
    benchmark.extra_info.update(attack_s=attack, train_s=train,
                                attack_speedup=attack["system"] / attack["tuned"],
                                train_speedup=train["system"] / train["tuned"])
