"""Per-query worst case over attacks: a query's AP depends only on its own perturbation,
so the robust mAP of an ensemble is the mean over queries of each query's lowest AP over the attacks.

The minimum of per-attack mAPs is only an upper bound on it. Pure functions, tested against a
brute-force search over every combination of per-query choices.
"""

from __future__ import annotations

import math

import torch


def _finite(values: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(values), torch.full_like(values, math.inf), values)


def worst_case_choice(ap: torch.Tensor, rank1: torch.Tensor) -> torch.Tensor:
    """For each query (column), the index of the attack (row) with the lowest AP.

    Ties go to the lower rank-1, then to the earlier attack; NaN (an unscorable query) counts as +inf.
    """
    if ap.shape != rank1.shape or ap.dim() != 2 or ap.shape[0] == 0:
        raise ValueError(f"expected two equal (attacks, queries) tensors, got {tuple(ap.shape)} and "
                         f"{tuple(rank1.shape)}")
    a, r = _finite(ap.double()), _finite(rank1.double())
    best = torch.zeros(ap.shape[1], dtype=torch.long)
    cols = torch.arange(ap.shape[1])
    for k in range(1, ap.shape[0]):
        cur_a, cur_r = a[best, cols], r[best, cols]
        better = (a[k] < cur_a) | ((a[k] == cur_a) & (r[k] < cur_r))
        best[better] = k
    return best


def gather_choice(candidates: list[torch.Tensor], choice: torch.Tensor) -> torch.Tensor:
    """Row q of the result is row q of `candidates[choice[q]]` (candidates: equal-shaped per-query tensors)."""
    stacked = torch.stack([c.cpu() for c in candidates])
    return stacked[choice, torch.arange(len(choice))]


def worst_case_map(ap: torch.Tensor) -> float:
    """mAP (percent) of the per-query worst case: mean over scorable queries of the lowest AP."""
    lowest = _finite(ap.double()).min(0).values
    ok = torch.isfinite(lowest)
    return float(lowest[ok].mean() * 100) if ok.any() else math.nan
