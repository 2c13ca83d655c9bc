"""`compare`: two runs on one test set, query by query, with paired intervals; different test sets refused."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmark.core.errors import BenchmarkError
from benchmark.report.compare import compare_runs, compare_text, resolve_run


def _run(folder, defense, ap, digests=None):
    folder.mkdir(parents=True)
    digests = digests or {"train": "t", "query": "q", "gallery": "g"}
    (folder / "config.json").write_text(json.dumps({"spec": {"defense_label": defense, "seed": 0},
                                                    "data_digests": digests}))
    n = len(ap)
    pd.DataFrame({"query": range(n), "name": [f"{i}.png" for i in range(n)], "pid": np.arange(n) // 2 + 1,
                  "camid": 1, "clean_ap": 0.6, "clean_r1": 1.0, "standard-v2@8/255_ap": ap,
                  "standard-v2@8/255_r1": 0.0}).to_csv(folder / "per_query.csv", index=False)
    return folder


def test_a_steady_gain_over_the_same_queries_is_separated_and_no_gain_is_not(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.02, 0.2, 40)
    a = _run(tmp_path / "a", "ddid", base + 0.02 + rng.normal(0, 0.002, 40))
    b = _run(tmp_path / "b", "metric-at", base)
    frame = compare_runs(a, b).set_index(["score", "metric"])
    gain = frame.loc[("standard-v2@8/255", "mAP")]
    assert gain["diff"] == pytest.approx(2.0, abs=0.1) and gain["low"] > 0 and gain["verdict"] == "a higher"
    assert frame.loc[("clean", "mAP"), "verdict"] == "not separated"  # identical clean scores
    text = compare_text(a, b)
    assert text.startswith("a = ddid seed 0 (a); b = metric-at seed 0 (b)") and "| standard-v2@8/255 | mAP |" in text
    assert resolve_run("b", [tmp_path / "elsewhere", tmp_path]) == b


def test_runs_on_different_test_sets_are_refused_in_one_line(tmp_path):
    a = _run(tmp_path / "a", "ddid", np.full(4, 0.1))
    b = _run(tmp_path / "b", "ddid", np.full(4, 0.1), {"train": "t", "query": "other", "gallery": "g"})
    with pytest.raises(BenchmarkError, match="different query sets"):
        compare_runs(a, b)
    with pytest.raises(BenchmarkError, match="no run folder with a per_query.csv named 'c'"):
        resolve_run("c", [tmp_path])
