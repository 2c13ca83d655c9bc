"""The vectorised evaluator must equal a plain per-query implementation of the Market rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.metrics import evaluate, pairwise_distance


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
@pytest.mark.parametrize("quantize", [None, 3, 20])
def test_matches_reference(seed, quantize):
    dist, qp, gp, qc, gc = random_case(seed, quantize=quantize)
    ours = evaluate(dist, qp, gp, qc, gc, chunk=7)
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


def test_negative_tied_with_positive_is_ranked_by_gallery_index():
    q_pids, q_cams = torch.tensor([1]), torch.tensor([0])
    g_pids = torch.tensor([2, 1, 1, 3])
    g_cams = torch.tensor([1, 1, 1, 1])
    # negative 0 ties positive 1 (index 0 < 1: ahead); negative 3 ties positive 2 (index 3 > 2: behind)
    m = evaluate(torch.tensor([[0.5, 0.5, 0.7, 0.7]]), q_pids, g_pids, q_cams, g_cams)
    ref = reference_eval(torch.tensor([[0.5, 0.5, 0.7, 0.7]]), q_pids.numpy(), g_pids.numpy(),
                         q_cams.numpy(), g_cams.numpy())
    assert m.mAP == pytest.approx(ref["mAP"]) == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
