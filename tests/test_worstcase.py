"""Per-query worst case (benchmark.run.worstcase) against a brute-force search over per-query choices."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from benchmark.core.metrics import evaluate_features
from benchmark.run.worstcase import gather_choice, worst_case_choice, worst_case_map


def test_worst_case_equals_brute_force_minimum_over_all_combinations():
    torch.manual_seed(0)
    k, q = 3, 6
    ap = torch.rand(k, q).double()
    ap[1, 2] = float("nan")
    ap[:, 4] = float("nan")  # an unscorable query stays out of the mean
    r1 = (torch.rand(k, q) > 0.5).double()
    best = math.inf
    for combo in itertools.product(range(k), repeat=q):
        values = [ap[c, j] for j, c in enumerate(combo) if not math.isnan(ap[c, j])]
        scorable = [j for j in range(q) if not torch.isnan(ap[:, j]).all()]
        if len({j for j, c in enumerate(combo) if not math.isnan(ap[c, j])}) < len(scorable):
            continue  # a combination must pick a scored entry for every scorable query
        best = min(best, sum(values) / len(values) * 100)
    assert worst_case_map(ap) == pytest.approx(best)
    choice = worst_case_choice(ap, r1)
    chosen = ap[choice, torch.arange(q)]
    ok = ~torch.isnan(chosen)
    assert float(chosen[ok].mean() * 100) == pytest.approx(best)


def test_ties_go_to_lower_rank1_then_earlier_attack():
    ap = torch.tensor([[0.2, 0.3], [0.2, 0.3], [0.5, 0.3]])
    r1 = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    assert worst_case_choice(ap, r1).tolist() == [1, 0]


def test_worst_case_of_real_embeddings_matches_rescoring(tiny_ws):
    """Gathering each query's worst embedding and re-scoring gives the mean of per-query minima."""
    ws = tiny_ws
    torch.manual_seed(3)
    gf = torch.randn(len(ws.gallery), 8)
    feats = [torch.randn(len(ws.query), 8) for _ in range(4)]
    scores = [evaluate_features(f, gf, ws.query.pids, ws.gallery.pids, ws.query.camids, ws.gallery.camids)
              for f in feats]
    ap = torch.stack([s.per_query_ap for s in scores])
    r1 = torch.stack([s.per_query_rank1 for s in scores])
    choice = worst_case_choice(ap, r1)
    worst = evaluate_features(gather_choice(feats, choice), gf, ws.query.pids, ws.gallery.pids, ws.query.camids,
                              ws.gallery.camids)
    assert worst.mAP == pytest.approx(worst_case_map(ap), abs=1e-6)
    assert worst.mAP <= min(s.mAP for s in scores) + 1e-9


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="equal"):
        worst_case_choice(torch.zeros(2, 3), torch.zeros(3, 2))
