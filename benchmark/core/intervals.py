"""95 % bootstrap intervals of a mean over queries, resampling identities.

Queries of one identity share a person, clothes and usually a gallery, so their APs are correlated:
resampling queries one by one would treat them as independent and give intervals that are too narrow.
The unit resampled is the identity (a cluster bootstrap): each replicate draws identities with
replacement and averages the APs of all their queries. Percentile interval, a fixed number of
replicates and a fixed generator seed, so the same numbers give the same interval on every machine.
"""

from __future__ import annotations

import math

import numpy as np

REPLICATES = 2000
LEVEL = 0.95
SEED = 0


def identity_bootstrap(values: np.ndarray, identities: np.ndarray, replicates: int = REPLICATES,
                       level: float = LEVEL, seed: int = SEED) -> tuple[float, float]:
    """(low, high) percentile interval of the mean of `values` (NaN entries, unscored queries, are left out),
    resampling whole identities; (nan, nan) with fewer than two identities."""
    values, identities = np.asarray(values, dtype=np.float64), np.asarray(identities)
    keep = ~np.isnan(values)
    values, identities = values[keep], identities[keep]
    groups, index = np.unique(identities, return_inverse=True)
    if len(groups) < 2:
        return math.nan, math.nan
    sums = np.bincount(index, weights=values, minlength=len(groups))
    counts = np.bincount(index, minlength=len(groups)).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, len(groups), size=(replicates, len(groups)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def paired_identity_bootstrap(a: np.ndarray, b: np.ndarray, identities: np.ndarray, replicates: int = REPLICATES,
                              level: float = LEVEL, seed: int = SEED) -> tuple[float, float]:
    """Interval of mean(a) - mean(b) over the same queries (scored in both), resampling identities: the
    comparison of two defenses on one test set, each query its own control."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = ~(np.isnan(a) | np.isnan(b))
    return identity_bootstrap(np.where(both, a - b, np.nan), identities, replicates, level, seed)


def paired_difference(a: np.ndarray, b: np.ndarray, identities: np.ndarray) -> tuple[float, float, float]:
    """(mean of a - b, low, high) over the queries scored in both, with `paired_identity_bootstrap`'s interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = ~(np.isnan(a) | np.isnan(b))
    low, high = paired_identity_bootstrap(a, b, identities)
    return float((a[both] - b[both]).mean()), low, high
