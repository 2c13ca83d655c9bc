"""Bootstrap intervals over queries resample identities: correct coverage, wider than a per-query bootstrap when
queries of one identity are correlated, deterministic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.core.intervals import identity_bootstrap, paired_identity_bootstrap, seed_and_identity_bootstrap


def _clustered(rng: np.random.Generator, identities: int = 60, per_id: int = 3) -> tuple[np.ndarray, np.ndarray]:
    level = rng.uniform(0, 1, identities)  # an identity is easy or hard for every one of its queries
    values = np.clip(level.repeat(per_id) + rng.normal(0, 0.05, identities * per_id), 0, 1)
    return values, np.arange(identities).repeat(per_id)


def test_the_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(200):
        values, ids = _clustered(rng)
        low, high = identity_bootstrap(values, ids, replicates=500, seed=trial)
        hits += low <= 0.5 <= high  # identity levels are uniform on [0, 1]: the true mean is 0.5
    assert 0.88 <= hits / 200 <= 0.99, hits


def test_resampling_identities_is_wider_than_resampling_correlated_queries():
    values, ids = _clustered(np.random.default_rng(2))
    by_identity = identity_bootstrap(values, ids)
    by_query = identity_bootstrap(values, np.arange(len(values)))  # each query its own unit
    assert by_identity[1] - by_identity[0] > 1.4 * (by_query[1] - by_query[0])


def test_unscored_queries_are_left_out_and_results_repeat():
    values, ids = _clustered(np.random.default_rng(3))
    with_nan = np.concatenate([values, [np.nan, np.nan]])
    assert identity_bootstrap(with_nan, np.concatenate([ids, [999, 999]])) == identity_bootstrap(values, ids)
    assert all(math.isnan(x) for x in identity_bootstrap(np.array([0.3, 0.4]), np.array([7, 7])))


def test_a_paired_interval_separates_a_steady_gain_that_unpaired_intervals_overlap():
    values, ids = _clustered(np.random.default_rng(4))
    better = np.clip(values + 0.02, 0, 1)
    low, high = paired_identity_bootstrap(better, values, ids)
    assert 0 < low <= high < 0.03
    a, b = identity_bootstrap(better, ids), identity_bootstrap(values, ids)
    assert a[0] < b[1]  # unpaired, the intervals overlap: the gain hides in the identity spread


def test_the_seed_and_identity_bootstrap_is_the_identity_one_for_one_seed_and_holds_the_seed_spread():
    values, ids = _clustered(np.random.default_rng(4))
    other = np.clip(values + np.random.default_rng(5).normal(0.02, 0.01, len(values)), 0, 1)
    mean, low, high = seed_and_identity_bootstrap((values - other)[None], ids)
    assert (low, high) == paired_identity_bootstrap(values, other, ids) and mean == pytest.approx(
        float((values - other).mean()))
    steady = np.stack([values - other] * 3)
    spread = steady + np.array([[0.05], [0.0], [-0.05]])  # same mean over seeds, seeds disagree
    _, s_low, s_high = seed_and_identity_bootstrap(steady, ids)
    _, w_low, w_high = seed_and_identity_bootstrap(spread, ids)
    assert w_high - w_low > 2 * (s_high - s_low)
    assert seed_and_identity_bootstrap(spread, ids) == seed_and_identity_bootstrap(spread, ids)
