"""Retrieval metrics under the Market-1501 rule: CMC, mAP (torchreid/fast-reid AP), mINP, per-ID bias.

For each query, gallery items of the same identity *and* camera are ignored, junk (pid -1) is
ignored, distractors (pid 0) stay as negatives, and a query with no valid positive is skipped.

Ties: items at exactly the same distance are scored by the expected value of each metric under
a uniformly random order of the tied items (McSherry & Najork, ECIR 2008), so a score never depends
on the order of the gallery files. Without ties this is the usual torchreid / fast-reid value.

No row of the distance matrix is sorted: the query's positive distances are sorted (they are few)
and one `searchsorted` of the row into them, one gather-compare and two `bincount`s give, for every
group of equal positive distances, how many valid negatives lie strictly before it and how many
tie with it; the expected AP, CMC and INP follow in closed form (harmonic numbers for AP, a
hypergeometric tail for CMC, the distribution of the last positive's position for INP).
`evaluate_features` computes distances a block of queries at a time, so the full query x gallery
matrix is never held (MSMT17's is 3.8 GB in float32). Distances are compared in float32.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.special import gammaln

JUNK_PID = -1
#: distances scored per block (float32): 16M elements = 64 MB held at once, whatever the data set size
BLOCK_ELEMENTS = 16 * 1024 * 1024


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
    cmc: torch.Tensor | None = field(repr=False, default=None)  # mean CMC curve in percent, ranks 1..max_rank

    @property
    def id_ap_variance(self) -> float:
        """Population variance of per-identity AP (in percent squared) — the paper's bias metric."""
        vals = torch.tensor(list(self.per_id_ap.values()), dtype=torch.float64)
        return float(vals.var(unbiased=False)) if len(vals) else float("nan")

    @property
    def id_ap_std(self) -> float:
        """Standard deviation of per-identity AP."""
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
        """Population variance of per-identity rank-1."""
        vals = torch.tensor(list(self.per_id_rank1.values()), dtype=torch.float64)
        return float(vals.var(unbiased=False)) if len(vals) else float("nan")

    def as_dict(self) -> dict[str, float]:
        """The headline scores as a JSON-able dict."""
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


@dataclass
class _Gallery:
    """What scoring needs of the gallery, computed once per evaluation."""

    by_pid: dict[int, np.ndarray]
    junk_idx: np.ndarray
    cams: np.ndarray
    harmonic: np.ndarray  # harmonic[n] = 1 + 1/2 + ... + 1/n

    @classmethod
    def build(cls, g_pids: np.ndarray, g_cams: np.ndarray) -> _Gallery:
        """Index the gallery by identity; harmonic numbers up to its size."""
        order = np.argsort(g_pids, kind="stable")
        bounds = np.flatnonzero(np.diff(g_pids[order])) + 1
        by_pid = {int(g_pids[grp[0]]): np.sort(grp) for grp in np.split(order, bounds) if len(grp)}
        junk_idx = by_pid.pop(JUNK_PID, np.empty(0, dtype=np.int64))
        harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, len(g_pids) + 2))])
        return cls(by_pid, junk_idx, g_cams, harmonic)


def _tie_groups(row: np.ndarray, pos_idx: np.ndarray, skip_idx: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group of equal positive distances (in ranking order): positives r, items strictly before i, tied t."""
    values, r = np.unique(row[pos_idx], return_counts=True)
    n_groups = len(values)
    right = np.searchsorted(values, row, side="right")  # positive groups at or before each item
    right[skip_idx] = n_groups + 1                      # skipped items (junk, own identity) count nowhere
    before = np.bincount(right, minlength=n_groups + 2)[:n_groups].cumsum()  # valid negatives strictly before
    slot = right - 1
    slot[slot >= n_groups] = 0
    tied_mask = (right > 0) & (right <= n_groups) & (row == values[slot])
    tied = np.bincount(slot[tied_mask], minlength=n_groups) if tied_mask.any() else np.zeros(n_groups, np.int64)
    pos_before = np.cumsum(r) - r
    return r, pos_before + before, r + tied


def _expected_scores(r: np.ndarray, i: np.ndarray, t: np.ndarray, harmonic: np.ndarray, max_rank: int
                     ) -> tuple[float, float, np.ndarray]:
    """Expected AP, INP and CMC[1..max_rank] of one query under a random order within each tie group."""
    n_pos = r.sum()
    r_f, i_f, t_f = r.astype(np.float64), i.astype(np.float64), t.astype(np.float64)
    # AP: position k of a group holds a positive with probability r/t; given that, the positives ahead of
    # it are those of earlier groups (R) plus (k-1)(r-1)/(t-1) of the group; precision there is that / (i+k).
    pos_before = np.cumsum(r_f) - r_f
    slope = np.where(t > 1, (r_f - 1) / np.maximum(t_f - 1, 1), 0.0)
    offset = pos_before + 1 - slope * (i_f + 1)
    sums = offset * (harmonic[i + t] - harmonic[i]) + slope * t_f
    sums = np.where(t == 1, (pos_before + 1) / (i_f + 1), sums)  # untied: exactly precision at the positive
    ap = float((r_f / t_f * sums).sum() / n_pos)
    # CMC: the first positive is in group 0, after i[0] negatives; P(none of the first m tied items is positive)
    ranks = np.arange(1, max_rank + 1)
    m = np.clip(ranks - i[0], 0, t[0])
    j = np.arange(max_rank)
    factors = np.where(j < t[0], (t_f[0] - r_f[0] - j) / np.maximum(t_f[0] - j, 1.0), 0.0).clip(0.0, 1.0)
    none_first = np.concatenate([[1.0], np.cumprod(factors)])[m]
    cmc = 1.0 - none_first
    # INP: the last positive is at position M of the last group, P(M = m) = C(m-1, r-1) / C(t, r).
    rl, il, tl = int(r[-1]), int(i[-1]), int(t[-1])
    if rl == tl:
        inp = n_pos / (il + tl)
    else:
        mm = np.arange(rl, tl + 1, dtype=np.float64)
        log_p = (gammaln(mm) - gammaln(rl) - gammaln(mm - rl + 1)
                 - (gammaln(tl + 1) - gammaln(rl + 1) - gammaln(tl - rl + 1)))
        inp = float(n_pos * (np.exp(log_p) / (il + mm)).sum())
    return ap, inp, cmc


def _evaluate_rows(dist: np.ndarray, rows: range, offset: int, q_pids: np.ndarray, q_cams: np.ndarray,
                   gallery: _Gallery, max_rank: int, ap: np.ndarray, inp: np.ndarray, cmc: np.ndarray) -> None:
    empty = np.empty(0, dtype=np.int64)
    for i in rows:
        q = offset + i
        same = gallery.by_pid.get(int(q_pids[q]), empty)
        pos_idx = same[gallery.cams[same] != q_cams[q]]
        if len(pos_idx) == 0:
            continue
        r, before, tied = _tie_groups(dist[i], pos_idx, np.concatenate([same, gallery.junk_idx]))
        ap[q], inp[q], cmc[q] = _expected_scores(r, before, tied, gallery.harmonic, max_rank)


def _as_tensor(x: torch.Tensor | np.ndarray | list) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


class _Scorer:
    """Accumulates per-query scores block by block of distance rows."""

    def __init__(self, q_pids: torch.Tensor, g_pids: torch.Tensor, q_cams: torch.Tensor, g_cams: torch.Tensor,
                 max_rank: int) -> None:
        if not isinstance(max_rank, int) or isinstance(max_rank, bool) or max_rank < 1:
            raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
        self.q_pids = _as_tensor(q_pids).cpu().long()
        self.qp, self.qc = self.q_pids.numpy(), _as_tensor(q_cams).cpu().long().numpy()
        gp, gc = _as_tensor(g_pids).cpu().long().numpy(), _as_tensor(g_cams).cpu().long().numpy()
        if len(self.qp) != len(self.qc) or len(gp) != len(gc):
            raise ValueError("pids and cameras must have one entry per query / gallery item")
        self.num_gallery = len(gp)
        self.gallery = _Gallery.build(gp, gc)
        self.max_rank = max(max_rank, 10)  # rank-5 and rank-10 are always reported
        nq = len(self.qp)
        self.ap, self.inp = np.full(nq, np.nan), np.full(nq, np.nan)
        self.cmc = np.full((nq, self.max_rank), np.nan)
        self.workers = max(1, torch.get_num_threads())

    def add(self, block: torch.Tensor, offset: int, rows_per_task: int = 128) -> None:
        """Score distance rows `offset .. offset + len(block)`."""
        if block.shape[1] != self.num_gallery:
            raise ValueError(f"distance rows have {block.shape[1]} columns, expected {self.num_gallery}")
        dist = np.ascontiguousarray(block.detach().cpu().float().numpy()) + np.float32(0.0)  # folds -0.0
        if np.isnan(dist).any():
            raise ValueError("distance matrix holds NaN; the embeddings are not finite")
        n = len(dist)
        parts = [range(s, min(n, s + rows_per_task)) for s in range(0, n, rows_per_task)]
        args = (offset, self.qp, self.qc, self.gallery, self.max_rank, self.ap, self.inp, self.cmc)
        # numpy's searchsorted and bincount release the GIL, so row blocks run in parallel threads.
        with ThreadPoolExecutor(min(self.workers, len(parts))) as pool:
            list(pool.map(lambda rows: _evaluate_rows(dist, rows, *args), parts))

    def result(self) -> RetrievalMetrics:
        """The aggregated metrics of every scored query."""
        ap, inp, cmc = torch.from_numpy(self.ap), torch.from_numpy(self.inp), torch.from_numpy(self.cmc)
        ok = ~torch.isnan(ap)
        n = int(ok.sum())
        if n == 0:
            raise ValueError("no query has a valid positive in the gallery (check pids and cameras)")
        mean_cmc = cmc[ok].mean(0) * 100
        per_id_ap: dict[int, list[float]] = {}
        per_id_r1: dict[int, list[float]] = {}
        for pid, a, r in zip(self.q_pids[ok].tolist(), ap[ok].tolist(), cmc[ok, 0].tolist(), strict=True):
            per_id_ap.setdefault(pid, []).append(a * 100)
            per_id_r1.setdefault(pid, []).append(r * 100)
        return RetrievalMetrics(
            mAP=float(ap[ok].mean() * 100), rank1=float(mean_cmc[0]), rank5=float(mean_cmc[4]),
            rank10=float(mean_cmc[9]), mINP=float(inp[ok].mean() * 100), num_queries=n, per_query_ap=ap,
            per_query_rank1=cmc[:, 0], per_id_ap={p: sum(v) / len(v) for p, v in per_id_ap.items()},
            per_id_rank1={p: sum(v) / len(v) for p, v in per_id_r1.items()}, cmc=mean_cmc)


def evaluate(distmat: torch.Tensor | np.ndarray, q_pids: torch.Tensor | np.ndarray, g_pids: torch.Tensor | np.ndarray,
             q_cams: torch.Tensor | np.ndarray, g_cams: torch.Tensor | np.ndarray, max_rank: int = 10,
             block_elements: int | None = None) -> RetrievalMetrics:
    """Market-rule CMC / mAP / mINP from a query x gallery distance matrix (smaller = closer).

    Accepts torch tensors or numpy arrays. `max_rank` is the length of the CMC curve (rank-5 and
    rank-10 are always computed).
    """
    distmat = _as_tensor(distmat)
    block_elements = block_elements or BLOCK_ELEMENTS
    if distmat.dim() != 2 or distmat.shape != (len(q_pids), len(g_pids)):
        raise ValueError(f"distance matrix is {tuple(distmat.shape)}, expected ({len(q_pids)}, {len(g_pids)})")
    scorer = _Scorer(q_pids, g_pids, q_cams, g_cams, max_rank)
    rows = max(1, block_elements // max(1, distmat.shape[1]))
    for start in range(0, len(distmat), rows):
        scorer.add(distmat[start:start + rows], start)
    return scorer.result()


class QueryScorer:
    """Per-query (AP, rank-1) against one gallery whose index is built once: for attacks' inner loops.

    The same rule as `evaluate_features`, without aggregation, without threads (batches are small)
    and without raising when no query of a batch is scorable; fractions in [0, 1], NaN where a query
    has no valid positive.
    """

    def __init__(self, gf: torch.Tensor, g_pids: torch.Tensor, g_cams: torch.Tensor, metric: str = "euclidean"
                 ) -> None:
        self.gf = _as_tensor(gf).float()
        self.metric = metric
        self.gallery = _Gallery.build(_as_tensor(g_pids).cpu().long().numpy(), _as_tensor(g_cams).cpu().long().numpy())

    def __call__(self, qf: torch.Tensor, q_pids: torch.Tensor, q_cams: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(AP, rank-1) of each query given its embedding."""
        qf = _as_tensor(qf).detach().float().cpu()
        dist = np.ascontiguousarray(pairwise_distance(qf, self.gf, self.metric).numpy()) + np.float32(0.0)
        if np.isnan(dist).any():
            raise ValueError("distance matrix holds NaN; the embeddings are not finite")
        n = len(dist)
        ap, inp, cmc = np.full(n, np.nan), np.full(n, np.nan), np.full((n, 10), np.nan)
        _evaluate_rows(dist, range(n), 0, _as_tensor(q_pids).cpu().long().numpy(),
                       _as_tensor(q_cams).cpu().long().numpy(), self.gallery, 10, ap, inp, cmc)
        return torch.from_numpy(ap), torch.from_numpy(cmc[:, 0].copy())


def query_scores(qf: torch.Tensor, gf: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor,
                 q_cams: torch.Tensor, g_cams: torch.Tensor, metric: str = "euclidean"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query (AP, rank-1) as fractions in [0, 1], NaN where a query has no valid positive."""
    return QueryScorer(gf, g_pids, g_cams, metric)(qf, q_pids, q_cams)


def evaluate_features(qf: torch.Tensor, gf: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor,
                      q_cams: torch.Tensor, g_cams: torch.Tensor, metric: str = "euclidean", max_rank: int = 10,
                      block_elements: int | None = None) -> RetrievalMetrics:
    """Scores from embeddings, computing distances a block of queries at a time (on the features' device).

    Peak extra memory is one block of `block_elements` float32 distances (64 MB by default) plus the
    scorer's per-query arrays, whatever the number of queries.
    """
    qf, gf = _as_tensor(qf), _as_tensor(gf)
    block_elements = block_elements or BLOCK_ELEMENTS
    scorer = _Scorer(q_pids, g_pids, q_cams, g_cams, max_rank)
    rows = max(1, block_elements // max(1, len(gf)))
    for start in range(0, len(qf), rows):
        scorer.add(pairwise_distance(qf[start:start + rows], gf, metric), start)
    return scorer.result()
