"""When is a gap between two recipes more than seed noise: the sd rule and the paired interval.

Shared by the ablation table and the seeds board, so both call a gap with the same rules.
"""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats


def paired_interval(deltas: pd.Series, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of per-seed differences (NaNs below two seeds).

    A step and the step it is judged against share each seed, and on synthped the seed also draws the
    data set: a seed that is easier for both moves both means together. The sd rule of `verdict` counts
    that shared shift as noise; the differences within a seed do not contain it.
    """
    n = len(deltas)
    if n < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * deltas.std(ddof=1) / math.sqrt(n))
    mean = float(deltas.mean())
    return mean - half, mean + half


def paired_verdict(low: float, high: float) -> str:
    """'separated' when the paired interval excludes 0, 'within seed spread' when it holds 0."""
    if math.isnan(low):
        return "one shared seed: not separable"
    return "separated" if low > 0 or high < 0 else "within seed spread"


def verdict(delta: float, sd_a: float, sd_b: float) -> str:
    """'separated' when |delta| exceeds the two seed sds added, 'within seed spread' otherwise; with a
    missing sd (one seed) nothing is called."""
    if math.isnan(delta):
        return ""
    spread = sd_a + sd_b
    if math.isnan(spread):
        return "one seed: not separable"
    return "separated" if abs(delta) > spread else "within seed spread"
