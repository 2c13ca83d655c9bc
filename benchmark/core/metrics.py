"""Retrieval metrics under the Market-1501 rule: CMC, mAP (torchreid/fast-reid AP), mINP, per-ID bias.

For each query, gallery items of the same identity *and* camera are ignored, junk (pid -1) is
ignored, distractors (pid 0) stay as negatives, and a query with no valid positive is skipped.

Ties: items at exactly the same distance are scored by the expected value of each metric under
a uniformly random order of the tied items (McSherry & Najork, ECIR 2008), so a score never depends
on the order of the gallery files. Without ties this is the usual torchreid / fast-reid value.

No row of the distance matrix is sorted and no Python runs per query: a block of queries is scored
with tensor operations (the same code on CPU and CUDA). Each query's positive distances are sorted
(they are few), together with the float just below each; a comparison pass selects the items not
beyond the query's last positive (the only ones that can change a score), one search places them
among those thresholds (when most items are selected, a histogram over equal-width buckets of the
row's range places every item that shares no bucket with a threshold, and only the rest are searched),
and a histogram gives, for every group of equal positive distances, how many valid negatives lie
strictly before it and how many tie with it. The expected AP, CMC and INP
follow in closed form (harmonic numbers for AP, a hypergeometric tail for CMC, the distribution of
the last positive's position for INP). `evaluate_features` drops junk gallery items before computing
distances and computes them a block of queries at a time, so the full query x gallery matrix is
never held (MSMT17's is 3.8 GB in float32). Distances are compared in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

JUNK_PID = -1
#: distances scored per block (float32): 4M elements = 16 MB held at once, whatever the data set size. Below
#: glibc's 32 MB mmap ceiling a block's temporaries reuse freed heap memory instead of faulting in fresh pages
#: (at Market size, true matches deep: half the time of 16M-element blocks on one core, measured)
BLOCK_ELEMENTS = 4 * 1024 * 1024
#: items are selected and searched when fewer than 1 in SELECT_BELOW can affect a score, else every item is
#: bucketed (crossover measured at Market size with the default blocks: about 1 in 14)
SELECT_BELOW = 14
#: the share of selected items is estimated from every SAMPLE_EVERY-th column
SAMPLE_EVERY = 16
#: fewer items than this in a block are searched one by one rather than bucketed (crossover ~30k, measured)
BUCKETS_FROM = 32 * 1024
#: bucketed placement: about ITEMS_PER_BUCKET items of a row per bucket, within [BUCKETS_MIN, BUCKETS_MAX]
ITEMS_PER_BUCKET, BUCKETS_MIN, BUCKETS_MAX = 4, 64, 4096


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
    """What scoring needs of the gallery, computed once per evaluation (on the distances' device)."""

    cams: torch.Tensor          # (G,) camera of every gallery item
    keep: torch.Tensor | None   # columns that are not junk, None when there is no junk
    ids: torch.Tensor           # (I,) sorted identities present in the gallery (junk excluded)
    members: torch.Tensor       # (I, S) gallery columns of each identity, left-packed, padded with -1
    sizes: torch.Tensor         # (I,) gallery items of each identity
    harmonic: torch.Tensor      # harmonic[n] = 1 + 1/2 + ... + 1/n, float64

    @classmethod
    def build(cls, g_pids: torch.Tensor, g_cams: torch.Tensor) -> _Gallery:
        """Index the gallery by identity; harmonic numbers up to its size."""
        g_pids, g_cams = g_pids.long(), g_cams.long()
        real = g_pids != JUNK_PID
        cols = torch.arange(len(g_pids), device=g_pids.device)[real]
        pids = g_pids[real]
        order = torch.argsort(pids, stable=True)
        ids, counts = torch.unique_consecutive(pids[order], return_counts=True)
        width = int(counts.max()) if len(counts) else 1
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(order), device=g_pids.device) - torch.repeat_interleave(starts, counts)
        members = torch.full((len(ids), width), -1, dtype=torch.long, device=g_pids.device)
        members[torch.repeat_interleave(torch.arange(len(ids), device=g_pids.device), counts), slot] = cols[order]
        n = torch.arange(1, len(g_pids) + 2, dtype=torch.float64, device=g_pids.device)
        harmonic = torch.cat([n.new_zeros(1), torch.cumsum(1.0 / n, 0)])
        return cls(g_cams, None if bool(real.all()) else cols, ids, members, counts, harmonic)

    def same_identity(self, q_pids: torch.Tensor) -> torch.Tensor:
        """(B, S) gallery columns sharing each query's identity, padded with -1."""
        row = torch.searchsorted(self.ids, q_pids).clamp(max=max(len(self.ids) - 1, 0))
        if len(self.ids) == 0:
            return torch.full((len(q_pids), 1), -1, dtype=torch.long, device=q_pids.device)
        found = self.ids[row] == q_pids
        # a large identity (Market's 2,793 distractors share pid 0) must not widen every query's row
        width = max(1, int(torch.where(found, self.sizes[row], 0).max())) if len(q_pids) else 1
        return torch.where(found[:, None], self.members[row, :width], -1)


def _row_bincount(index: torch.Tensor, bins: int) -> torch.Tensor:
    """Per-row histogram of a (B, N) int64 tensor of bin numbers in [0, bins)."""
    counts = torch.zeros(len(index), bins, dtype=torch.long, device=index.device)
    return counts.scatter_add_(1, index, torch.ones((1, 1), dtype=torch.long, device=index.device).expand_as(index))


def _ordered_keys(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered like (row, value) pairs: the row in the high half, the float's order-preserving bits low."""
    bits = (values + 0.0).view(torch.int32).long()  # + 0.0 folds -0.0 into +0.0, which must tie with it
    bits = torch.where(bits < 0, -(1 << 31) - bits - 1, bits) + (1 << 31)  # negative floats order in reverse
    return rows * (1 << 32) + bits


def _count_before(columns: torch.Tensor, thresholds: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """(B, T + 1) histogram of `searchsorted(thresholds[b], columns[b])`, exact for every bin up to `last[b]`.

    Only items up to a row's last positive can affect its scores, and on a trained model they are few:
    a comparison pass selects them and they are placed exactly. When most items are selected (positives
    ranked deep, as after an attack), every item is bucketed instead.
    """
    sample = columns[:, ::SAMPLE_EVERY]  # both ways are exact: a sample of the items is enough to choose
    if int(torch.count_nonzero(sample <= last)) * SELECT_BELOW > sample.numel():
        return _count_every_item(columns, thresholds)
    rows, cols = (columns <= last).nonzero(as_tuple=True)
    return _place_exactly(rows, columns[rows, cols], thresholds)


def _place_exactly(rows: torch.Tensor, values: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(B, T + 1) histogram of `searchsorted(thresholds[row], value)` over the given items.

    One search of (row, value) keys in all rows' thresholds at once, whatever the number of rows.
    """
    width = thresholds.shape[1]
    row_ids = torch.arange(len(thresholds), device=thresholds.device)[:, None].expand_as(thresholds)
    keys = _ordered_keys(row_ids.reshape(-1), thresholds.reshape(-1))
    place = torch.searchsorted(keys, _ordered_keys(rows, values)) - rows * width
    counts = torch.bincount(rows * (width + 1) + place, minlength=len(thresholds) * (width + 1))
    return counts.view(len(thresholds), width + 1)


def _count_every_item(columns: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(B, T + 1) histogram of `searchsorted(thresholds[b], columns[b])` for every item, exact.

    A binary search of every item costs ~20 ns each; equal-width buckets of each row's range cost a few
    elementwise passes. The bucket map (subtract, multiply, floor, clamp: each exactly rounded, so the
    same on every code path) is monotone, so an item whose bucket holds no threshold lies strictly
    between the thresholds of the buckets around it: a bucket histogram places all of those at once.
    The few items sharing a bucket with a threshold are placed exactly. A small block (the passes'
    fixed cost would not pay) and one holding an infinite value (no finite range to divide) are
    searched item by item.
    """
    if columns.numel() >= BUCKETS_FROM:  # an attack's per-iteration scoring never pays for the range
        lo, hi = columns.amin(1, keepdim=True), columns.amax(1, keepdim=True)  # two passes: aminmax is ~20x slower here
        if bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
            return _bucket_histogram(columns, thresholds, lo, hi)
    return _row_bincount(torch.searchsorted(thresholds, columns), thresholds.shape[1] + 1)


def _bucket_histogram(columns: torch.Tensor, thresholds: torch.Tensor, lo: torch.Tensor,
                      hi: torch.Tensor) -> torch.Tensor:
    """`_count_every_item` by equal-width buckets of each row's finite range [lo, hi]."""
    rows, size = columns.shape
    width = thresholds.shape[1]
    buckets = min(BUCKETS_MAX, max(BUCKETS_MIN, size // ITEMS_PER_BUCKET))
    # float64 for the quotient: a tiny range must give a large finite scale, never inf (0 * inf is NaN)
    scale = (buckets / (hi - lo).double().clamp(min=1e-300)).clamp(max=1e30).float()
    index = torch.int32 if rows * buckets < 2**31 else torch.int64
    offset = torch.arange(rows, dtype=index, device=columns.device)[:, None] * buckets

    def bucket(values: torch.Tensor) -> torch.Tensor:
        return torch.sub(values, lo).mul_(scale).floor_().clamp_(0, buckets - 1).to(index).add_(offset)

    item_bucket = bucket(columns).view(-1)
    threshold_bucket = bucket(thresholds)
    per_bucket = torch.bincount(item_bucket, minlength=rows * buckets)
    thresholds_in = torch.bincount(threshold_bucket.view(-1), minlength=rows * buckets)
    shared = thresholds_in > 0
    per_bucket.masked_fill_(shared, 0)
    thresholds_in = thresholds_in.view(rows, buckets)
    bin_of_bucket = thresholds_in.cumsum(1)  # for a bucket holding no threshold: those below all its items
    counts = torch.zeros(rows, width + 1, dtype=torch.long, device=columns.device)
    counts.scatter_add_(1, bin_of_bucket, per_bucket.view(rows, buckets))
    exact = shared.index_select(0, item_bucket).nonzero().flatten()
    return counts + _place_exactly(exact // size, columns.reshape(-1)[exact], thresholds)


@dataclass
class _PositiveGroups:
    """Per query and positive (padded to the widest query): where its group of equal distances lies."""

    n_pos: torch.Tensor   # (B,) valid positives of each query
    valid: torch.Tensor   # (B, W) the column is one of the query's positives
    first: torch.Tensor   # (B, W) positives strictly before the positive's group
    r: torch.Tensor       # (B, W) positives in the group (float64)
    i: torch.Tensor       # (B, W) items (valid negatives and positives) strictly before the group
    t: torch.Tensor       # (B, W) items in the group


def _positive_groups(dist: torch.Tensor, q_pids: torch.Tensor, q_cams: torch.Tensor, gallery: _Gallery
                     ) -> _PositiveGroups | None:
    """Each query's positive distances, sorted, and the items before and tied with each; None without positives.

    No row is sorted. A query's positive distances P (few) are sorted; thresholds S = P and the float just
    below each P; one `searchsorted` of the row into S and a per-row histogram give, for each positive,
    the valid negatives strictly before it (d <= below(P)) and tied with it (d == P). Same-identity items
    (positives and same-camera copies) are counted and subtracted, junk columns are dropped first.
    """
    same = gallery.same_identity(q_pids)
    in_same = same >= 0
    same_d = dist.gather(1, same.clamp(min=0))
    positive = in_same & (gallery.cams[same.clamp(min=0)] != q_cams[:, None])
    n_pos = positive.sum(1)
    width = int(n_pos.max()) if len(n_pos) else 0
    if width == 0:
        return None
    inf = torch.tensor(float("inf"), device=dist.device)
    pos_d = torch.where(positive, same_d, inf).sort(1).values[:, :width].contiguous()
    below = torch.nextafter(pos_d, -inf)
    thresholds = torch.cat([below, pos_d], 1).sort(1).values
    bins = thresholds.shape[1] + 1
    columns = dist if gallery.keep is None else dist.index_select(1, gallery.keep)
    last_positive = pos_d.gather(1, (n_pos - 1).clamp(min=0)[:, None])
    counts = _count_before(columns, thresholds, last_positive)
    counts -= _row_bincount(torch.where(in_same, torch.searchsorted(thresholds, same_d), bins - 1), bins)
    counts[:, -1] = 0
    at_most = counts.cumsum(1)  # at_most[j] = valid negatives with d <= thresholds[j] (j its first position)
    less = at_most.gather(1, torch.searchsorted(thresholds, below))
    tied = at_most.gather(1, torch.searchsorted(thresholds, pos_d)) - less
    valid = torch.arange(width, device=dist.device)[None] < n_pos[:, None]
    start = torch.searchsorted(pos_d, pos_d)
    r = (torch.searchsorted(pos_d, pos_d, right=True) - start).double()
    i = torch.where(valid, start + less, 0)           # items strictly before the positive's group
    t = torch.where(valid, r.long() + tied, 1)        # items in the group
    return _PositiveGroups(n_pos, valid, start, r, i, t)


def _expected_ap(g: _PositiveGroups, harmonic: torch.Tensor) -> torch.Tensor:
    """Expected AP of each query under a random order within each tie group; NaN without a valid positive."""
    pb, i_f, t_f = g.first.double(), g.i.double(), g.t.double()
    slope = torch.where(g.t > 1, (g.r - 1) / (t_f - 1).clamp(min=1), 0.0)
    offset = pb + 1 - slope * (i_f + 1)
    sums = offset * (harmonic[g.i + g.t] - harmonic[g.i]) + slope * t_f
    sums = torch.where(g.t == 1, (pb + 1) / (i_f + 1), sums)  # untied: exactly the precision at the positive
    per_query = torch.where(g.valid, sums / t_f, 0.0).sum(1) / g.n_pos.clamp(min=1)
    return torch.where(g.n_pos > 0, per_query, float("nan"))


def _score_block(dist: torch.Tensor, q_pids: torch.Tensor, q_cams: torch.Tensor, gallery: _Gallery,
                 max_rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expected AP, INP and CMC[1..max_rank] of each query row under a random order within each tie group."""
    g = _positive_groups(dist, q_pids, q_cams, gallery)
    if g is None:
        nan = torch.full((len(dist),), float("nan"), dtype=torch.float64, device=dist.device)
        return nan, nan.clone(), nan[:, None].expand(-1, max_rank).clone()
    ap = _expected_ap(g, gallery.harmonic)
    scored = g.n_pos > 0
    # CMC: the first positive lies in group 0, after i0 items; P(none of the first m tied items is positive)
    i0, t0, r0 = g.i[:, :1], g.t[:, :1], g.r[:, :1]
    j = torch.arange(max_rank, device=dist.device)[None]
    m = (j + 1 - i0).clamp(min=0).minimum(t0)
    factors = torch.where(j < t0, (t0 - r0 - j) / (t0 - j).clamp(min=1).double(), 0.0).clamp(0.0, 1.0)
    none_first = torch.cat([torch.ones_like(factors[:, :1]), factors.cumprod(1)], 1).gather(1, m)
    cmc = torch.where(scored[:, None], 1.0 - none_first, float("nan"))
    # INP: the last positive sits at position M of the last group, P(M = m) = C(m-1, r-1) / C(t, r)
    n_pos = g.n_pos
    last = (n_pos - 1).clamp(min=0)[:, None]
    rl, il, tl = (v.gather(1, last)[:, 0] for v in (g.r.long(), g.i, g.t))
    inp = torch.where(scored, n_pos / (il + tl).double(), float("nan"))
    for q in torch.nonzero(scored & (tl > rl)).flatten().tolist():
        inp[q] = _inp_tied_last_group(int(n_pos[q]), int(rl[q]), int(il[q]), int(tl[q]))
    return ap, inp, cmc


def _inp_tied_last_group(n_pos: int, rl: int, il: int, tl: int) -> float:
    """INP when negatives tie with the last positive group: the expectation over its position."""
    mm = torch.arange(rl, tl + 1, dtype=torch.float64)
    log_p = (torch.lgamma(mm) - math.lgamma(rl) - torch.lgamma(mm - rl + 1)
             - (math.lgamma(tl + 1) - math.lgamma(rl + 1) - math.lgamma(tl - rl + 1)))
    return float(n_pos * (log_p.exp() / (il + mm)).sum())


def _as_tensor(x: torch.Tensor | np.ndarray | list) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _without_junk(gf: torch.Tensor, g_pids: torch.Tensor | np.ndarray, g_cams: torch.Tensor | np.ndarray
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gallery features, identities and cameras without the junk items, which no query ever scores."""
    g_pids, g_cams = _as_tensor(g_pids).long(), _as_tensor(g_cams).long()
    real = g_pids != JUNK_PID
    if bool(real.all()):
        return gf, g_pids, g_cams
    return gf[real.to(gf.device)], g_pids[real], g_cams[real]


def _checked_distances(dist: torch.Tensor) -> torch.Tensor:
    """Float32 distances; NaN refused (a sum is NaN when any term is, and costs far less than a mask)."""
    dist = dist.float()
    if bool(torch.isnan(dist.sum())):
        raise ValueError("distance matrix holds NaN; the embeddings are not finite")
    return dist


class _Scorer:
    """Accumulates per-query scores block by block of distance rows."""

    def __init__(self, q_pids: torch.Tensor, g_pids: torch.Tensor, q_cams: torch.Tensor, g_cams: torch.Tensor,
                 max_rank: int, device: torch.device | None = None) -> None:
        if not isinstance(max_rank, int) or isinstance(max_rank, bool) or max_rank < 1:
            raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
        self.q_pids = _as_tensor(q_pids).cpu().long()
        self.q_cams = _as_tensor(q_cams).cpu().long()
        g_pids, g_cams = _as_tensor(g_pids).long(), _as_tensor(g_cams).long()
        if len(self.q_pids) != len(self.q_cams) or len(g_pids) != len(g_cams):
            raise ValueError("pids and cameras must have one entry per query / gallery item")
        self.device = device or torch.device("cpu")
        self.num_gallery = len(g_pids)
        self.gallery = _Gallery.build(g_pids.to(self.device), g_cams.to(self.device))
        self.max_rank = max(max_rank, 10)  # rank-5 and rank-10 are always reported
        nq = len(self.q_pids)
        self.ap, self.inp = torch.full((nq,), float("nan"), dtype=torch.float64), torch.full((nq,), float("nan"),
                                                                                             dtype=torch.float64)
        self.cmc = torch.full((nq, self.max_rank), float("nan"), dtype=torch.float64)

    def add(self, block: torch.Tensor, offset: int) -> None:
        """Score distance rows `offset .. offset + len(block)`."""
        if block.shape[1] != self.num_gallery:
            raise ValueError(f"distance rows have {block.shape[1]} columns, expected {self.num_gallery}")
        dist = _checked_distances(block.detach().to(self.device))
        rows = slice(offset, offset + len(dist))
        ap, inp, cmc = _score_block(dist, self.q_pids[rows].to(self.device), self.q_cams[rows].to(self.device),
                                    self.gallery, self.max_rank)
        self.ap[rows], self.inp[rows], self.cmc[rows] = ap.cpu(), inp.cpu(), cmc.cpu()

    def result(self) -> RetrievalMetrics:
        """The aggregated metrics of every scored query."""
        ap, inp, cmc = self.ap, self.inp, self.cmc
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

    The same rule and code as `evaluate_features`, without aggregation and without raising when no
    query of a batch is scorable; computed on the gallery features' device; fractions in [0, 1], NaN
    where a query has no valid positive.
    """

    def __init__(self, gf: torch.Tensor, g_pids: torch.Tensor, g_cams: torch.Tensor, metric: str = "euclidean"
                 ) -> None:
        gf, g_pids, g_cams = _without_junk(_as_tensor(gf).detach().float(), g_pids, g_cams)
        self.gf, self.metric = gf, metric
        self.gallery = _Gallery.build(g_pids.to(gf.device), g_cams.to(gf.device))

    def lowest_ap(self, q_pids: torch.Tensor, q_cams: torch.Tensor) -> torch.Tensor:
        """The lowest AP each query can reach (every true match ranked last), NaN where it has no valid positive.

        With n true matches among N scored items the worst ranking puts the k-th match at N - n + k, so
        AP_min = (1/n) sum_k k / (N - n + k): a query with many matches can never fall near 0.
        """
        q_pids, q_cams = _as_tensor(q_pids).to(self.gf.device).long(), _as_tensor(q_cams).to(self.gf.device).long()
        same = self.gallery.same_identity(q_pids)
        in_same = same >= 0
        positive = in_same & (self.gallery.cams[same.clamp(min=0)] != q_cams[:, None])
        n = positive.sum(1)
        scored_items = len(self.gf) - (in_same & ~positive).sum(1)  # junk is already gone
        k = torch.arange(1, max(1, int(n.max()) if len(n) else 1) + 1, device=n.device)[None]
        terms = torch.where(k <= n[:, None], k / (scored_items - n)[:, None].add(k).double(), 0.0)
        return torch.where(n > 0, terms.sum(1) / n.clamp(min=1), float("nan")).cpu()

    def __call__(self, qf: torch.Tensor, q_pids: torch.Tensor, q_cams: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(AP, rank-1) of each query given its embedding, on the embedding's device."""
        qf = _as_tensor(qf).detach()
        dist, q_pids, q_cams = self._inputs(qf, q_pids, q_cams)
        ap, _, cmc = _score_block(dist, q_pids, q_cams, self.gallery, 1)
        return ap.to(qf.device), cmc[:, 0].to(qf.device)

    def ap(self, qf: torch.Tensor, q_pids: torch.Tensor, q_cams: torch.Tensor) -> torch.Tensor:
        """AP of each query alone (the same values as `__call__`'s), on the embedding's device: an attack's
        per-iteration score, which needs neither CMC nor INP."""
        qf = _as_tensor(qf).detach()
        dist, q_pids, q_cams = self._inputs(qf, q_pids, q_cams)
        groups = _positive_groups(dist, q_pids, q_cams, self.gallery)
        if groups is None:
            return torch.full((len(dist),), float("nan"), dtype=torch.float64, device=qf.device)
        return _expected_ap(groups, self.gallery.harmonic).to(qf.device)

    def _inputs(self, qf: torch.Tensor, q_pids: torch.Tensor, q_cams: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = self.gf.device
        dist = _checked_distances(pairwise_distance(qf.to(device), self.gf, self.metric))
        return dist, _as_tensor(q_pids).to(device).long(), _as_tensor(q_cams).to(device).long()


def query_scores(qf: torch.Tensor, gf: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor,
                 q_cams: torch.Tensor, g_cams: torch.Tensor, metric: str = "euclidean"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query (AP, rank-1) as fractions in [0, 1], NaN where a query has no valid positive."""
    return QueryScorer(gf, g_pids, g_cams, metric)(qf, q_pids, q_cams)


def evaluate_features(qf: torch.Tensor, gf: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor,
                      q_cams: torch.Tensor, g_cams: torch.Tensor, metric: str = "euclidean", max_rank: int = 10,
                      block_elements: int | None = None) -> RetrievalMetrics:
    """Scores from embeddings, computing distances a block of queries at a time (on the features' device).

    Peak extra memory is one block of `block_elements` float32 distances (16 MB by default) plus the
    scorer's per-query arrays, whatever the number of queries.
    """
    qf = _as_tensor(qf)
    gf, g_pids, g_cams = _without_junk(_as_tensor(gf), g_pids, g_cams)
    block_elements = block_elements or BLOCK_ELEMENTS
    scorer = _Scorer(q_pids, g_pids, q_cams, g_cams, max_rank, device=gf.device)
    rows = max(1, block_elements // max(1, len(gf)))
    for start in range(0, len(qf), rows):
        scorer.add(pairwise_distance(qf[start:start + rows], gf, metric), start)
    return scorer.result()
