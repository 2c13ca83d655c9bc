"""Guides for metric attacks, computed once per query set and the same way for every attack.

As in Bouniot et al.'s code, guides come from the query set: the same-identity queries are the
"push" set, and identity centroids of the clean query features give the pull targets.
"""

from __future__ import annotations

import torch

from attacks.base import AttackContext


def _id_centroids(ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor]:
    if "centroids" not in ctx.cache:
        ids, inverse = torch.unique(ctx.query_pids, return_inverse=True)
        sums = torch.zeros(len(ids), ctx.query_feats.shape[1]).index_add_(0, inverse, ctx.query_feats.float())
        counts = torch.bincount(inverse, minlength=len(ids)).clamp(min=1)[:, None]
        ctx.cache["centroids"] = (ids, sums / counts)
    return ctx.cache["centroids"]


def push_guides(ctx: AttackContext, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same-ID query features (including the query itself): (B, K, D) features and (B, K) mask."""
    if "push" not in ctx.cache:
        pids, feats = ctx.query_pids, ctx.query_feats.float()
        same = pids[:, None] == pids[None]
        k = int(same.sum(1).max())
        order = torch.argsort((~same).to(torch.int8), dim=1, stable=True)[:, :k]
        mask = same.gather(1, order)
        ctx.cache["push"] = (feats[order], mask)
    feats, mask = ctx.cache["push"]
    return feats[index], mask[index]


def farthest_negative_centroid(ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
    """For each query, the centroid of the other identity whose centroid is farthest from it."""
    if "far" not in ctx.cache:
        ids, cents = _id_centroids(ctx)
        d = torch.cdist(ctx.query_feats.float(), cents)
        d[ctx.query_pids[:, None] == ids[None]] = float("-inf")
        ctx.cache["far"] = cents[d.argmax(1)]
    return ctx.cache["far"][index]


def target_centroid(ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
    """A seeded random other identity's centroid per query (impersonation target)."""
    if "target" not in ctx.cache:
        ids, cents = _id_centroids(ctx)
        g = torch.Generator().manual_seed(ctx.seed + 7)
        own = torch.searchsorted(ids, ctx.query_pids)
        shift = torch.randint(1, len(ids), (len(own),), generator=g) if len(ids) > 1 else torch.zeros_like(own)
        choice = (own + shift) % len(ids)
        ctx.cache["target"] = (cents[choice], ids[choice])
    return ctx.cache["target"][0][index]


def centroid_logits(ctx: AttackContext, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-centroid classifier over the query identities: (logits, label of each query's own identity).

    logit_j = -||f(x) - c_j||^2 / T over the clean-query identity centroids c_j. Raw squared distances
    are in the hundreds, which saturates the softmax and zeroes the cross-entropy gradient in float32;
    T (a tenth of the median squared distance from the clean queries to the centroids) keeps logit
    gaps of order one.
    """
    ids, cents = _id_centroids(ctx)
    if "temperature" not in ctx.cache:
        median = float(torch.cdist(ctx.query_feats.float(), cents).pow(2).median())
        ctx.cache["temperature"] = max(median / 10, 1e-6)
    cents = cents.to(emb.device)
    return -(emb[:, None] - cents[None]).pow(2).sum(-1) / ctx.cache["temperature"], ids


def centroid_labels(ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
    """Index of each query's own identity among the centroids of `centroid_logits`."""
    ids, _ = _id_centroids(ctx)
    return torch.searchsorted(ids, ctx.query_pids[index])
