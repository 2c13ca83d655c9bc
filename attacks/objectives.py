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


def retrieval_margin(emb: torch.Tensor, ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
    """Mean distance to the query's true gallery matches minus mean distance to its k nearest wrong items.

    k is the query's number of true matches; matches are scored as the evaluator does (same
    identity, other camera, junk ignored). The ReID counterpart of AutoAttack's DLR loss: it acts
    directly on the ranking that AP measures.
    """
    if not ctx.can_score():
        raise BenchmarkError("the retrieval-margin loss needs the clean gallery (features, pids, cameras) in its "
                             "context")
    idx = index.cpu()
    gf = ctx.gallery_feats.to(emb.device)
    d = pairwise_distance(emb, gf, ctx.metric)
    gp, gc = ctx.gallery_pids.to(emb.device), ctx.gallery_camids.to(emb.device)
    qp, qc = ctx.query_pids[idx].to(emb.device)[:, None], ctx.query_camids[idx].to(emb.device)[:, None]
    valid = (gp != JUNK_PID)[None]
    same = gp[None] == qp
    positive = same & (gc[None] != qc) & valid
    negative = ~same & valid
    n_pos = positive.sum(1).clamp(min=1)
    pos_mean = (d * positive).sum(1) / n_pos
    k = int(n_pos.max())
    nearest = torch.where(negative, d, torch.full_like(d, float("inf"))).topk(k, dim=1, largest=False).values
    use = (torch.arange(k, device=emb.device)[None] < n_pos[:, None]) & torch.isfinite(nearest)
    neg_mean = torch.where(use, nearest, torch.zeros_like(nearest)).sum(1) / use.sum(1).clamp(min=1)
    return pos_mean - neg_mean
