"""`compare`: two runs on one test set, query by query, with paired intervals; different test sets refused."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmark.core.errors import BenchmarkError
from benchmark.report.compare import compare_runs, compare_text, resolve_run, resolve_side


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


def _seeded(folder, defense, seed, ap):
    run = _run(folder, defense, ap)
    config = json.loads((run / "config.json").read_text())
    config["spec"]["seed"] = seed
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_several_seeds_a_side_are_paired_by_seed_and_their_spread_widens_the_interval(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.uniform(0.05, 0.2, 40)
    gains = {0: 0.04, 1: 0.00, 2: 0.02}  # the gain depends on the training seed
    a = [_seeded(tmp_path / f"a{s}", "ddid", s, base + g + rng.normal(0, 0.002, 40)) for s, g in gains.items()]
    b = [_seeded(tmp_path / f"b{s}", "metric-at", s, base) for s in gains]
    frame = compare_runs(list(reversed(a)), b).set_index(["score", "metric"])  # paired by seed, not by order
    row = frame.loc[("standard-v2@8/255", "mAP")]
    assert row["diff"] == pytest.approx(2.0, abs=0.1)
    per_seed = [float(x) for x in row["per_seed"].split()]
    assert per_seed == pytest.approx([100 * g for g in gains.values()], abs=0.1)
    one_seed = compare_runs(a[2], b[2]).set_index(["score", "metric"]).loc[("standard-v2@8/255", "mAP")]
    assert row["high"] - row["low"] > 3 * (one_seed["high"] - one_seed["low"])  # seed spread is in the interval
    text = compare_text(a, b)
    assert text.startswith("a = ddid seeds 0,1,2 (3 runs); b = metric-at seeds 0,1,2 (3 runs)")
    assert "over training seeds and identities" in text and "| per seed |" in text


def test_sides_on_different_seeds_or_with_a_repeated_seed_are_refused(tmp_path):
    a = [_seeded(tmp_path / f"a{s}", "ddid", s, np.full(4, 0.1)) for s in (0, 1)]
    b = [_seeded(tmp_path / f"b{s}", "metric-at", s, np.full(4, 0.1)) for s in (0, 2)]
    with pytest.raises(BenchmarkError, match=r"different seeds \(0,1 vs 0,2\)"):
        compare_runs(a, b)
    with pytest.raises(BenchmarkError, match="two runs of one training seed"):
        compare_runs([a[0], a[0]], b)
    with pytest.raises(BenchmarkError, match="name a run"):
        compare_runs([], b)


def test_a_published_defense_name_stands_for_its_runs_of_the_suite_one_per_seed(tmp_path):
    results, boards = tmp_path / "results", tmp_path / "leaderboards"
    rows = []
    for defense in ("ddid", "metric-at"):
        for seed in (0, 1):
            for suite in ("standard-v1", "standard-v2"):
                run_id = f"{defense}-s{seed}-{suite}"
                _run(results / run_id, defense, [0.1, 0.2])
                rows.append({"dataset": "synthped", "train_dataset": "synthped", "defense": defense, "backbone": "b",
                             "seed": seed, "settings": "", "suite": suite, "run_id": run_id, "data_seed": "0"})
    rows.append({**rows[0], "settings": "epochs=2", "run_id": "custom"})  # not at the protocol's settings
    boards.mkdir()
    pd.DataFrame(rows).to_csv(boards / "summary-synthped.csv", index=False)
    side = resolve_side("ddid", [results], boards, "synthped", "standard-v2")
    assert [run.name for run in side] == ["ddid-s0-standard-v2", "ddid-s1-standard-v2"]
    assert [r.name for r in resolve_side("metric-at", [results], boards, "synthped", "standard-v1", [1])] \
        == ["metric-at-s1-standard-v1"]
    assert resolve_side("ddid-s1-standard-v1", [results], boards, "synthped", "standard-v2")[0].name \
        == "ddid-s1-standard-v1"  # a run id is a run, whatever the suite asked for
    with pytest.raises(BenchmarkError, match="not a run and not a defense"):
        resolve_side("goat", [results], boards, "synthped", "standard-v1")
    with pytest.raises(BenchmarkError, match="no published standard-v2 run of seeds 2"):
        resolve_side("ddid", [results], boards, "synthped", "standard-v2", [2])


def test_without_suite_compare_uses_the_suite_the_tables_show_for_the_two_defenses(tmp_path):
    """The headline suite where it covers every seed of both defenses, else the suite that does (PKU has v1 only)."""
    from benchmark.report.compare import suite_on_view

    boards = tmp_path / "leaderboards"
    boards.mkdir()
    rows = [{"dataset": "synthped", "train_dataset": "synthped", "defense": d, "backbone": "b", "seed": seed,
             "settings": "", "suite": suite, "run_id": f"{d}-{seed}-{suite}", "data_seed": "0"}
            for d in ("ddid", "metric-at") for seed in (0, 1) for suite in ("standard-v1", "standard-v2")
            if not (d == "metric-at" and seed == 1 and suite == "standard-v2")]
    pd.DataFrame(rows).to_csv(boards / "summary-synthped.csv", index=False)
    assert suite_on_view(["ddid", "metric-at"], boards, "synthped", "standard-v2") == "standard-v1"
    assert suite_on_view(["ddid", "RUN_ID"], boards, "synthped", "standard-v2") == "standard-v2"
    assert suite_on_view(["a", "b"], boards, "synthped", "standard-v2") == "standard-v2"  # no published defense
    assert suite_on_view(["ddid"], boards, "pku", "standard-v2") == "standard-v2"  # no board
