"""Retrieval metrics under the Market-1501 rule: CMC, mAP (torchreid/fast-reid AP), mINP, per-ID bias.

For each query, gallery items of the same identity *and* camera are ignored, junk (pid -1) is
ignored, distractors (pid 0) stay as negatives, and a query with no valid positive is skipped.
Ties in distance are broken by gallery index (what a stable sort would do).

No row of the distance matrix is sorted: the rank of the k-th positive is k plus the number of
valid negatives closer than it. One `searchsorted` of the row into the query's few sorted
positive distances and one `bincount` give those counts for all positives at once; junk and
same-identity items are removed by index (they are few), and exact ties are repaired by gallery
index only in the rare rows that have them. Distances are compared in float32.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

JUNK_PID = -1


@dataclass
class RetrievalMetrics:
    """Scores in percent. Per-query values are NaN for skipped queries."""

    mAP: float
    rank1: float
    rank5: float
    rank10: float
    mINP: float
    num_queries: int
    per_query_ap: torch.Tensor = field(repr=False)
    per_query_rank1: torch.Tensor = field(repr=False)
    per_id_ap: dict[int, float] = field(repr=False, default_factory=dict)
    per_id_rank1: dict[int, float] = field(repr=False, default_factory=dict)

    @property
    def id_ap_variance(self) -> float:
        """Population variance of per-identity AP (in percent squared) — the paper's bias metric."""
        vals = torch.tensor(list(self.per_id_ap.values()), dtype=torch.float64)
        return float(vals.var(unbiased=False)) if len(vals) else float("nan")

    @property
    def id_ap_std(self) -> float:
        return self.id_ap_variance ** 0.5

    @property
    def id_ap_worst_decile(self) -> float:
        """Mean AP of the worst 10 % of identities (at least one)."""
        vals = sorted(self.per_id_ap.values())
        if not vals:
            return float("nan")
        k = max(1, len(vals) // 10)
        return sum(vals[:k]) / k

    @property
    def id_rank1_variance(self) -> float:
        vals = torch.tensor(list(self.per_id_rank1.values()), dtype=torch.float64)
        return float(vals.var(unbiased=False)) if len(vals) else float("nan")

    def as_dict(self) -> dict[str, float]:
        return {"mAP": self.mAP, "rank1": self.rank1, "rank5": self.rank5, "rank10": self.rank10,
                "mINP": self.mINP, "num_queries": self.num_queries, "id_ap_var": self.id_ap_variance,
                "id_ap_worst10": self.id_ap_worst_decile, "id_r1_var": self.id_rank1_variance}


def pairwise_distance(qf: torch.Tensor, gf: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """Squared Euclidean (same ranking as Euclidean) or cosine distance, float32."""
    qf, gf = qf.float(), gf.float()
    if metric == "cosine":
        qn = torch.nn.functional.normalize(qf, dim=1)
        gn = torch.nn.functional.normalize(gf, dim=1)
        return 1.0 - qn @ gn.T
    if metric != "euclidean":
        raise ValueError(f"unknown distance '{metric}'; use 'euclidean' or 'cosine'")
    d = (qf * qf).sum(1, keepdim=True) + (gf * gf).sum(1)[None] - 2.0 * qf @ gf.T
    return d.clamp_(min=0.0)


def _positive_ranks(row: np.ndarray, pos_idx: np.ndarray, skip_idx: np.ndarray) -> np.ndarray:
    """0-based ranks among valid gallery items of one query's positives, in ranking order.

    `pos_idx`: valid positives; `skip_idx`: every gallery item that is not a valid negative
    (junk, and all items of the query's own identity).
    """
    order = np.lexsort((pos_idx, row[pos_idx]))  # positives by (distance, gallery index)
    pos_idx = pos_idx[order]
    thresholds = row[pos_idx]
    n_pos = len(thresholds)
    # above[n] = number of positives at or below negative n; n is strictly ahead of positive k iff above <= k
    above = np.searchsorted(thresholds, row, side="right")
    above[skip_idx] = n_pos + 1
    ahead = np.bincount(above, minlength=n_pos + 2)[:n_pos].cumsum()
    # A negative tied with a positive is ahead of it iff its gallery index is smaller. Only valid
    # negatives count; skipped items (the positives among them) are subtracted back out.
    equal = row == thresholds[np.clip(above - 1, 0, n_pos - 1)]
    if np.count_nonzero(equal) > np.count_nonzero(equal[skip_idx]):
        equal[skip_idx] = False
        for n in np.flatnonzero(equal):
            ahead += (thresholds == row[n]) & (pos_idx > n)
    return np.arange(n_pos) + ahead


def _evaluate_rows(dist: np.ndarray, rows: range, q_pids: np.ndarray, q_cams: np.ndarray,
                   by_pid: dict[int, np.ndarray], g_cams: np.ndarray, junk_idx: np.ndarray,
                   max_rank: int, ap: np.ndarray, inp: np.ndarray, first: np.ndarray) -> None:
    empty = np.empty(0, dtype=np.int64)
    for i in rows:
        same = by_pid.get(int(q_pids[i]), empty)
        pos_idx = same[g_cams[same] != q_cams[i]]
        if len(pos_idx) == 0:
            continue
        ranks = _positive_ranks(dist[i], pos_idx, np.concatenate([same, junk_idx]))
        n = len(ranks)
        ap[i] = np.mean(np.arange(1, n + 1) / (ranks + 1.0))
        inp[i] = n / (ranks[-1] + 1.0)
        first[i] = ranks[0]


def evaluate(distmat: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor, q_cams: torch.Tensor,
             g_cams: torch.Tensor, max_rank: int = 10, chunk: int = 256,
             workers: int | None = None) -> RetrievalMetrics:
    """Market-rule CMC / mAP / mINP from a query x gallery distance matrix (smaller = closer)."""
    if distmat.shape != (len(q_pids), len(g_pids)):
        raise ValueError(f"distance matrix is {tuple(distmat.shape)}, expected ({len(q_pids)}, {len(g_pids)})")
    if torch.isnan(distmat).any():
        raise ValueError("distance matrix holds NaN; the embeddings are not finite")
    dist = np.ascontiguousarray(distmat.detach().cpu().float().numpy()) + np.float32(0.0)  # folds -0.0
    qp, gp = q_pids.cpu().numpy().astype(np.int64), g_pids.cpu().numpy().astype(np.int64)
    qc, gc = q_cams.cpu().numpy().astype(np.int64), g_cams.cpu().numpy().astype(np.int64)
    order = np.argsort(gp, kind="stable")
    bounds = np.flatnonzero(np.diff(gp[order])) + 1
    by_pid = {int(gp[grp[0]]): np.sort(grp) for grp in np.split(order, bounds) if len(grp)}
    junk_idx = by_pid.pop(JUNK_PID, np.empty(0, dtype=np.int64))
    nq = len(qp)
    ap_np, inp_np, first_np = np.full(nq, np.nan), np.full(nq, np.nan), np.full(nq, np.nan)
    # numpy's searchsorted and bincount release the GIL, so row blocks run in parallel threads.
    workers = max(1, min(workers or torch.get_num_threads(), nq))
    blocks = [range(s, min(nq, s + chunk)) for s in range(0, nq, chunk)]
    args = (qp, qc, by_pid, gc, junk_idx, max_rank, ap_np, inp_np, first_np)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda rows: _evaluate_rows(dist, rows, *args), blocks))
    ap, inp = torch.from_numpy(ap_np), torch.from_numpy(inp_np)
    first = torch.from_numpy(first_np)
    cmc = (first[:, None] < torch.arange(1, max_rank + 1, dtype=torch.float64)[None]).to(torch.float64)
    cmc[torch.isnan(first)] = float("nan")
    ok = ~torch.isnan(ap)
    n = int(ok.sum())
    if n == 0:
        raise ValueError("no query has a valid positive in the gallery (check pids and cameras)")
    mean_cmc = cmc[ok].mean(0) * 100
    per_id_ap: dict[int, list[float]] = {}
    per_id_r1: dict[int, list[float]] = {}
    for pid, a, r in zip(q_pids[ok].tolist(), ap[ok].tolist(), cmc[ok, 0].tolist(), strict=True):
        per_id_ap.setdefault(pid, []).append(a * 100)
        per_id_r1.setdefault(pid, []).append(r * 100)
    return RetrievalMetrics(
        mAP=float(ap[ok].mean() * 100), rank1=float(mean_cmc[0]),
        rank5=float(mean_cmc[min(4, max_rank - 1)]), rank10=float(mean_cmc[min(9, max_rank - 1)]),
        mINP=float(inp[ok].mean() * 100), num_queries=n, per_query_ap=ap, per_query_rank1=cmc[:, 0],
        per_id_ap={p: sum(v) / len(v) for p, v in per_id_ap.items()},
        per_id_rank1={p: sum(v) / len(v) for p, v in per_id_r1.items()},
    )


def evaluate_features(qf: torch.Tensor, gf: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor,
                      q_cams: torch.Tensor, g_cams: torch.Tensor, metric: str = "euclidean") -> RetrievalMetrics:
    return evaluate(pairwise_distance(qf, gf, metric), q_pids, g_pids, q_cams, g_cams)
