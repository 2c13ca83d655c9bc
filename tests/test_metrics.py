"""The vectorised evaluator must equal a plain per-query implementation of the Market rule, and with ties
the average of that implementation over every order of the gallery."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from benchmark.core import metrics
from benchmark.core.metrics import QueryScorer, evaluate, evaluate_features, pairwise_distance


@pytest.fixture(autouse=True, params=["select-then-search", "bucket-every-item", "search-every-item"])
def counting_path(request, monkeypatch):
    """Every test runs through each way of placing gallery items among a query's positives."""
    monkeypatch.setattr(metrics, "SELECT_BELOW", 0 if request.param == "select-then-search" else 10**12)
    monkeypatch.setattr(metrics, "BUCKETS_FROM", 0 if request.param == "bucket-every-item" else 10**12)
    return request.param


def reference_eval(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=10):
    """Straightforward per-query loop: stable sort, drop junk and same-ID-same-camera, torchreid AP."""
    dist = distmat.float().numpy()
    aps, inps, cmcs, qids = [], [], [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        keep = (g_pids[order] != -1) & ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        matches = (g_pids[order][keep] == q_pids[i]).astype(np.float64)
        if not matches.any():
            continue
        cum = matches.cumsum()
        positions = np.flatnonzero(matches)
        aps.append(np.mean(cum[positions] / (positions + 1)))
        inps.append(matches.sum() / (positions[-1] + 1))
        cmc = np.zeros(max_rank)
        if positions[0] < max_rank:
            cmc[positions[0]:] = 1
        cmcs.append(cmc)
        qids.append(q_pids[i])
    cmc = np.mean(cmcs, axis=0) * 100
    return {"mAP": np.mean(aps) * 100, "mINP": np.mean(inps) * 100, "rank1": cmc[0], "rank5": cmc[4],
            "rank10": cmc[9], "n": len(aps), "aps": dict(zip(range(len(aps)), aps, strict=True))}


def random_case(seed, nq=40, ng=300, n_ids=12, n_cams=3, quantize=None):
    g = torch.Generator().manual_seed(seed)
    q_pids = torch.randint(1, n_ids, (nq,), generator=g)
    g_pids = torch.randint(-1, n_ids, (ng,), generator=g)  # includes junk (-1) and distractors (0)
    q_cams = torch.randint(0, n_cams, (nq,), generator=g)
    g_cams = torch.randint(0, n_cams, (ng,), generator=g)
    dist = torch.rand(nq, ng, generator=g) * 4 - 1  # negative distances too
    if quantize:
        dist = (dist * quantize).round() / quantize  # many exact ties
    return dist, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_without_ties(seed):
    dist, qp, gp, qc, gc = random_case(seed)
    ours = evaluate(dist, qp, gp, qc, gc, block_elements=7 * dist.shape[1])
    ref = reference_eval(dist, qp.numpy(), gp.numpy(), qc.numpy(), gc.numpy())
    assert ours.num_queries == ref["n"]
    for key in ("mAP", "mINP", "rank1", "rank5", "rank10"):
        assert getattr(ours, key) == pytest.approx(ref[key], abs=1e-6), key


def test_all_junk_and_no_positive_queries_are_skipped():
    dist = torch.rand(3, 5)
    q_pids = torch.tensor([1, 2, 3])
    q_cams = torch.tensor([0, 0, 0])
    g_pids = torch.tensor([1, 2, -1, 2, 3])
    g_cams = torch.tensor([1, 0, 1, 0, 0])  # query 2: only same-camera positives; query 3 likewise
    m = evaluate(dist, q_pids, g_pids, q_cams, g_cams)
    assert m.num_queries == 1
    assert torch.isnan(m.per_query_ap[1:]).all()
    with pytest.raises(ValueError, match="no query has a valid positive"):
        evaluate(dist[1:], q_pids[1:], torch.full((5,), -1), q_cams[1:], g_cams)


def test_perfect_and_worst_ranking():
    q_pids, q_cams = torch.tensor([1]), torch.tensor([0])
    g_pids, g_cams = torch.tensor([1, 1, 0, 2]), torch.tensor([1, 1, 1, 1])
    best = evaluate(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), q_pids, g_pids, q_cams, g_cams)
    assert best.mAP == pytest.approx(100) and best.rank1 == 100 and best.mINP == pytest.approx(100)
    worst = evaluate(torch.tensor([[0.9, 0.8, 0.1, 0.2]]), q_pids, g_pids, q_cams, g_cams)
    assert worst.rank1 == 0 and worst.rank5 == 100
    assert worst.mAP == pytest.approx(100 * (1 / 3 + 2 / 4) / 2)
    assert worst.mINP == pytest.approx(100 * 2 / 4)


def test_per_identity_bias_metrics():
    dist, qp, gp, qc, gc = random_case(3)
    m = evaluate(dist, qp, gp, qc, gc)
    ids = {int(p) for p, a in zip(qp, m.per_query_ap, strict=True) if not torch.isnan(a)}
    assert set(m.per_id_ap) == ids
    vals = np.array(list(m.per_id_ap.values()))
    assert m.id_ap_variance == pytest.approx(vals.var())
    assert m.id_ap_worst_decile == pytest.approx(np.sort(vals)[: max(1, len(vals) // 10)].mean())


def test_distances_rank_like_euclidean():
    q, g = torch.randn(5, 8), torch.randn(9, 8)
    ours = pairwise_distance(q, g)
    assert torch.allclose(ours, torch.cdist(q, g) ** 2, atol=1e-4)
    cos = pairwise_distance(q, g, "cosine")
    assert cos.min() >= -1e-6 and cos.max() <= 2 + 1e-6


def _average_over_orders(dist, qp, gp, qc, gc):
    """Brute force: the reference (stable sort) averaged over every permutation of the gallery."""
    sums = {"mAP": 0.0, "mINP": 0.0, "rank1": 0.0, "rank5": 0.0}
    perms = list(itertools.permutations(range(dist.shape[1])))
    for perm in perms:
        p = torch.tensor(perm)
        ref = reference_eval(dist[:, p], qp.numpy(), gp[p].numpy(), qc.numpy(), gc[p].numpy())
        for key in sums:
            sums[key] += ref[key] / len(perms)
    return sums


@pytest.mark.parametrize("seed", range(8))
def test_ties_score_the_average_over_every_gallery_order(seed):
    g = torch.Generator().manual_seed(seed)
    nq, ng = 5, 6
    qp = torch.randint(1, 3, (nq,), generator=g)
    gp = torch.randint(-1, 3, (ng,), generator=g)
    gp[:2] = torch.tensor([1, 2])  # every query identity has a gallery item
    qc, gc = torch.zeros(nq, dtype=torch.long), torch.ones(ng, dtype=torch.long)
    dist = torch.randint(0, 3, (nq, ng), generator=g).float()  # many exact ties
    ours = evaluate(dist, qp, gp, qc, gc)
    brute = _average_over_orders(dist, qp, gp, qc, gc)
    for key, value in brute.items():
        assert getattr(ours, key) == pytest.approx(value, abs=1e-9), key


def test_gallery_order_does_not_change_scores():
    dist, qp, gp, qc, gc = random_case(4, quantize=3)
    flip = torch.arange(len(gp) - 1, -1, -1)
    a = evaluate(dist, qp, gp, qc, gc)
    b = evaluate(dist[:, flip], qp, gp[flip], qc, gc[flip])
    for key in ("mAP", "mINP", "rank1", "rank5", "rank10", "id_ap_variance"):
        assert getattr(a, key) == pytest.approx(getattr(b, key), abs=1e-9), key


def test_collapsed_embeddings_score_chance_fast():
    g = torch.Generator().manual_seed(0)
    ng = 19_732
    gp, gc = torch.randint(1, 700, (ng,), generator=g), torch.randint(0, 6, (ng,), generator=g)
    qp, qc = gp[:50].clone(), (gc[:50] + 1) % 6
    start = time.perf_counter()
    m = evaluate(torch.zeros(50, ng), qp, gp, qc, gc)  # every row fully tied
    assert time.perf_counter() - start < 2.0
    # a fully tied row: rank-1 is the share of positives among the valid items
    valid = [(gp != -1) & ~((gp == qp[i]) & (gc == qc[i])) for i in range(50)]
    share = [float(((gp == qp[i]) & valid[i]).sum() / valid[i].sum()) for i in range(50)]
    ok = [s > 0 for s in share]
    assert m.rank1 == pytest.approx(100 * np.mean([s for s, o in zip(share, ok, strict=True) if o]), rel=1e-9)


def test_a_tied_negative_counts_half_ahead():
    q_pids, q_cams = torch.tensor([1]), torch.tensor([0])
    g_pids, g_cams = torch.tensor([2, 1]), torch.tensor([1, 1])
    m = evaluate(torch.tensor([[0.5, 0.5]]), q_pids, g_pids, q_cams, g_cams)
    assert m.mAP == pytest.approx(100 * (1 + 1 / 2) / 2) and m.rank1 == pytest.approx(50)
    assert m.mINP == pytest.approx(100 * (1 + 1 / 2) / 2)


def test_max_rank_and_numpy_inputs():
    dist, qp, gp, qc, gc = random_case(1)
    full = evaluate(dist, qp, gp, qc, gc)
    short = evaluate(dist.numpy(), qp.numpy(), gp.numpy(), qc.numpy(), gc.numpy(), max_rank=3)
    assert (short.rank5, short.rank10, short.mAP) == (full.rank5, full.rank10, full.mAP)
    assert len(evaluate(dist, qp, gp, qc, gc, max_rank=50).cmc) == 50
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="max_rank"):
            evaluate(dist, qp, gp, qc, gc, max_rank=bad)


def test_blockwise_features_equal_one_matrix():
    g = torch.Generator().manual_seed(2)
    qf, gf = torch.randn(37, 16, generator=g), torch.randn(211, 16, generator=g)
    _, qp, gp, qc, gc = random_case(2, nq=37, ng=211)
    whole = evaluate(pairwise_distance(qf, gf), qp, gp, qc, gc)
    blocks = evaluate_features(qf, gf, qp, gp, qc, gc, block_elements=211 * 5)  # 5 queries per block
    assert blocks.mAP == whole.mAP and torch.equal(blocks.per_query_ap.nan_to_num(-1),
                                                   whole.per_query_ap.nan_to_num(-1))


def structured_case(seed, nq=60, ng=900, n_ids=40, noise=0.6):
    """Embeddings clustered by identity, so positives rank near the top (a trained model's matrix)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_ids, 32, generator=g)
    q_pids, g_pids = torch.randint(1, n_ids, (nq,), generator=g), torch.randint(-1, n_ids, (ng,), generator=g)
    g_pids[:200] = 0  # one large distractor identity
    qf = centers[q_pids] + noise * torch.randn(nq, 32, generator=g)
    gf = centers[g_pids.clamp(min=0)] + noise * torch.randn(ng, 32, generator=g)
    q_cams, g_cams = torch.randint(0, 4, (nq,), generator=g), torch.randint(0, 4, (ng,), generator=g)
    return qf, gf, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("noise", [0.3, 1.0, 3.0])
def test_clustered_embeddings_match_reference(noise):
    qf, gf, qp, gp, qc, gc = structured_case(0, noise=noise)
    ours = evaluate_features(qf, gf, qp, gp, qc, gc, block_elements=9 * len(gf))
    ref = reference_eval(pairwise_distance(qf, gf), qp.numpy(), gp.numpy(), qc.numpy(), gc.numpy())
    assert ours.num_queries == ref["n"]
    for key in ("mAP", "mINP", "rank1", "rank5", "rank10"):
        assert getattr(ours, key) == pytest.approx(ref[key], abs=1e-6), key


def test_query_scorer_equals_the_evaluator_per_query():
    qf, gf, qp, gp, qc, gc = structured_case(1, noise=1.0)
    whole = evaluate_features(qf, gf, qp, gp, qc, gc)
    ap, rank1 = QueryScorer(gf, gp, gc)(qf, qp, qc)
    assert torch.equal(ap.nan_to_num(-1), whole.per_query_ap.nan_to_num(-1))
    assert torch.equal(rank1.nan_to_num(-1), whole.per_query_rank1.nan_to_num(-1))


def test_the_attack_loops_ap_only_score_equals_the_full_one():
    """`QueryScorer.ap` (what APGD scores each iterate with) skips CMC and INP but not a bit of AP: ties (rounded
    embeddings), junk, queries without a positive, and a batch with no positive at all."""
    qf, gf, qp, gp, qc, gc = structured_case(3, noise=1.0)
    qf, gf = (qf * 2).round() / 2, (gf * 2).round() / 2  # many exactly equal distances
    scorer = QueryScorer(gf, gp, gc)
    assert torch.equal(scorer.ap(qf, qp, qc).nan_to_num(-1), scorer(qf, qp, qc)[0].nan_to_num(-1))
    unmatched = torch.full_like(qp, 10_000)
    assert torch.isnan(scorer.ap(qf, unmatched, qc)).all() and scorer.ap(qf, unmatched, qc).dtype == torch.float64


def test_signed_zero_and_negative_distances_tie_and_order_correctly():
    q_pids, q_cams = torch.tensor([1, 1]), torch.tensor([0, 0])
    g_pids, g_cams = torch.tensor([2, 1, 3, 1]), torch.tensor([1, 1, 1, 1])
    dist = torch.tensor([[-0.0, 0.0, -1e-7, 0.5], [0.0, -0.0, -2.0, -3.0]])
    ours = evaluate(dist, q_pids, g_pids, q_cams, g_cams)
    # row 0: -1e-7 (neg) first, then 0.0 (pos) tied with -0.0 (neg), then the positive at 0.5
    # row 1: the positive at -3.0 first, then -2.0 (neg), then 0.0 (pos) tied with -0.0 (neg)
    ap0 = (0.5 * (1 / 2) + 0.5 * (1 / 3) + 2 / 4) / 2
    ap1 = (1 + 0.5 * (2 / 3) + 0.5 * (2 / 4)) / 2
    assert ours.per_query_ap.tolist() == pytest.approx([ap0, ap1], abs=1e-12)


def test_lowest_ap_is_reached_by_ranking_every_match_last():
    qf, gf, qp, gp, qc, gc = structured_case(2, noise=1.0)
    scorer = QueryScorer(gf, gp, gc)
    lowest = scorer.lowest_ap(qp, qc)
    # a query's worst ranking: every true match behind every other item
    real = gp != -1
    dist = torch.where((gp[None] == qp[:, None]) & real[None], 10.0, 1.0)
    ap = evaluate(dist, qp, gp, qc, gc).per_query_ap
    assert torch.allclose(lowest, ap, equal_nan=True, atol=1e-12)
    assert lowest.min() > 0


def _searched(columns, thresholds):
    return metrics._row_bincount(torch.searchsorted(thresholds, columns), thresholds.shape[1] + 1)


@pytest.mark.parametrize("case", ["wide", "ties-and-signed-zeros", "constant-rows", "tiny-range", "infinite"])
def test_bucketed_placement_equals_a_search_of_every_item(case):
    """The bucket histogram is exact: it equals searching every item, whatever the row's range."""
    g = torch.Generator().manual_seed(3)
    rows, size = 8, 5000  # above BUCKETS_FROM, so the buckets are used by default too
    columns = torch.randn(rows, size, generator=g) * 3
    if case == "ties-and-signed-zeros":
        columns = (columns * 2).round() / 2
        columns[:, ::7] = -0.0
        columns[:, 1::7] = 0.0
    elif case == "constant-rows":
        columns = torch.full((rows, size), 2.5)
    elif case == "tiny-range":
        columns = 1.0 + torch.randint(0, 3, (rows, size), generator=g) * torch.finfo(torch.float32).eps
    elif case == "infinite":
        columns[0, 5] = float("inf")
        columns[1, 7] = float("-inf")
    picks = columns.gather(1, torch.randint(0, size, (rows, 20), generator=g))
    picks[:, -3:] = float("inf")  # rows with fewer positives are padded with inf
    thresholds = torch.cat([torch.nextafter(picks, torch.tensor(-float("inf"))), picks], 1).sort(1).values
    counts = metrics._count_every_item(columns, thresholds)
    assert torch.equal(counts, _searched(columns, thresholds))
    assert int(counts.sum()) == rows * size
