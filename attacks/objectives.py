"""Losses that need more than the query set: a retrieval margin on the clean gallery, and the
cross-entropy of the nearest-centroid classifier over the query identities.

Both are white-box objectives for the standard suite (`attacks.apgd_attacks`).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from attacks.base import AttackContext
from attacks.guides import centroid_labels, centroid_logits
from benchmark.core.errors import BenchmarkError
from benchmark.core.metrics import JUNK_PID, pairwise_distance


def centroid_cross_entropy(emb: torch.Tensor, ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each query's own identity under the nearest-centroid classifier (art-pgd's objective)."""
    logits, _ = centroid_logits(ctx, emb)
    return F.cross_entropy(logits, centroid_labels(ctx, index).to(emb.device), reduction="none")


def _scored_gallery(emb: torch.Tensor, ctx: AttackContext, index: torch.Tensor, loss: str
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(distances to the clean gallery, same identity, true match, scored item) as the evaluator counts them."""
    if not ctx.can_score():
        raise BenchmarkError(f"the {loss} loss needs the clean gallery (features, pids, cameras) in its context")
    idx = index.cpu()
    d = pairwise_distance(emb, ctx.gallery_feats.to(emb.device), ctx.metric)
    gp, gc = ctx.gallery_pids.to(emb.device), ctx.gallery_camids.to(emb.device)
    qp, qc = ctx.query_pids[idx].to(emb.device)[:, None], ctx.query_camids[idx].to(emb.device)[:, None]
    same = gp[None] == qp
    scored = (gp != JUNK_PID)[None] & ~(same & (gc[None] == qc))
    return d, same, same & scored, scored


def retrieval_margin(emb: torch.Tensor, ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
    """Mean distance to the query's true gallery matches minus mean distance to its k nearest wrong items.

    k is the query's number of true matches; matches are scored as the evaluator does (same
    identity, other camera, junk ignored). The ReID counterpart of AutoAttack's DLR loss: it acts
    directly on the ranking that AP measures.
    """
    d, same, positive, scored = _scored_gallery(emb, ctx, index, "retrieval-margin")
    negative = ~same & scored
    n_pos = positive.sum(1).clamp(min=1)
    pos_mean = (d * positive).sum(1) / n_pos
    k = int(n_pos.max())
    nearest = torch.where(negative, d, torch.full_like(d, float("inf"))).topk(k, dim=1, largest=False).values
    use = (torch.arange(k, device=emb.device)[None] < n_pos[:, None]) & torch.isfinite(nearest)
    neg_mean = torch.where(use, nearest, torch.zeros_like(nearest)).sum(1) / use.sum(1).clamp(min=1)
    return pos_mean - neg_mean


def smoothed_ap(emb: torch.Tensor, ctx: AttackContext, index: torch.Tensor, temperature: float) -> torch.Tensor:
    """Smoothed AP of each query against the clean gallery (Brown et al., ECCV 2020, "Smooth-AP").

    A true match's rank is 1 + the number of scored items closer to the query; the step function in
    that count is replaced by a sigmoid of the distance difference over `temperature` (distances divided
    by the query's mean distance to the scored items, so the temperature does not depend on the
    embedding's scale). Items are scored as the evaluator does (junk and same-camera copies ignored).
    Differentiable in `emb`; queries without a valid positive get 0.
    """
    d, _, positive, scored = _scored_gallery(emb, ctx, index, "smoothed-AP")
    n_pos = positive.sum(1)
    width = max(1, int(n_pos.max()))
    scale = ((d * scored).sum(1, keepdim=True) / scored.sum(1, keepdim=True).clamp(min=1)).detach().clamp(min=1e-12)
    d = d / scale
    # the true matches of each query, first `n_pos` columns (stable sort keeps gallery order among them)
    pos_idx = torch.sort(positive.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :width]
    pos_valid = torch.arange(width, device=emb.device)[None] < n_pos[:, None]
    d_pos = d.gather(1, pos_idx)
    ahead = torch.sigmoid((d_pos[:, :, None] - d[:, None, :]) / temperature)  # item j ahead of match i
    ahead = ahead * scored[:, None, :]
    ahead_pos = ahead * positive[:, None, :]
    self_term = torch.sigmoid(torch.zeros((), device=emb.device))  # each match counts itself at d_i - d_i = 0
    rank = 1 + ahead.sum(2) - self_term
    rank_pos = 1 + ahead_pos.sum(2) - self_term
    precision = torch.where(pos_valid, rank_pos / rank, torch.zeros_like(rank))
    return precision.sum(1) / n_pos.clamp(min=1)
