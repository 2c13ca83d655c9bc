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


def seed_and_identity_bootstrap(differences: np.ndarray, identities: np.ndarray, replicates: int = REPLICATES,
                                level: float = LEVEL, seed: int = SEED) -> tuple[float, float, float]:
    """(mean, low, high) of per-query differences between two defenses trained on the same seeds, one row per
    training seed (seeds x queries; NaN: a query not scored in both). Each replicate draws training seeds and test
    identities with replacement, both at once, so the interval holds the spread over training and over the test
    set; with one seed it is `paired_identity_bootstrap`'s. A query is kept only where every seed scored it."""
    differences = np.atleast_2d(np.asarray(differences, dtype=np.float64))
    keep = ~np.isnan(differences).any(axis=0)
    differences, identities = differences[:, keep], np.asarray(identities)[keep]
    mean = float(differences.mean()) if differences.size else math.nan
    if len(differences) == 1:
        return (mean, *identity_bootstrap(differences[0], identities, replicates, level, seed))
    groups, index = np.unique(identities, return_inverse=True)
    if len(groups) < 2:
        return mean, math.nan, math.nan
    sums = np.stack([np.bincount(index, weights=row, minlength=len(groups)) for row in differences])  # seeds x ids
    counts = np.bincount(index, minlength=len(groups)).astype(np.float64)
    rng = np.random.default_rng(seed)
    n_seeds = len(differences)
    seed_weights = np.stack([np.bincount(d, minlength=n_seeds)
                             for d in rng.integers(0, n_seeds, (replicates, n_seeds))])
    id_weights = np.stack([np.bincount(d, minlength=len(groups))
                           for d in rng.integers(0, len(groups), (replicates, len(groups)))]).astype(np.float64)
    means = (np.einsum("rs,sg,rg->r", seed_weights, sums, id_weights)
             / (seed_weights.sum(axis=1) * (id_weights @ counts)))
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return mean, float(low), float(high)
