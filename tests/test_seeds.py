"""Several seeds: `run --seeds` trains and scores one model per seed; the seeds board gives mean, sd and n."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from benchmark.report.boards import seed_summary


def _summary(defense: str, values: list[float], clean: float = 50.0) -> list[dict]:
    return [{"dataset": "synthped", "train_dataset": "synthped", "defense": defense, "backbone": "reidnet-s",
             "settings": "", "seed": s, "clean_mAP": clean + s, "worst_case_mAP": v, "worst_case_R1": v / 2,
             "robust_mAP_mean": 2 * v, "data_seed": "0"} for s, v in enumerate(values)]


def test_seed_summary_reports_mean_sd_n_and_calls_only_gaps_beyond_the_spread():
    frame = pd.DataFrame(_summary("a", [10.0, 12.0, 14.0]) + _summary("b", [11.0, 12.0, 13.0])
                         + _summary("c", [2.0, 3.0, 4.0]) + _summary("d", [5.0]))
    out = seed_summary(frame).set_index("defense")
    assert out.loc["a", "n"] == 3 and out.loc["a", "seeds"] == "0,1,2"
    assert out.loc["a", "worst_case_mAP_mean"] == pytest.approx(12.0)
    assert out.loc["a", "worst_case_mAP_sd"] == pytest.approx(2.0)
    assert out.loc["a", "clean_mAP_mean"] == pytest.approx(51.0)
    assert out.loc["a", "vs_best"] == "best"  # a tie on the mean goes to the first recipe
    assert out.loc["b", "vs_best"].endswith("within seed spread")
    assert out.loc["c", "vs_best"].endswith(": separated")
    assert "one seed" in out.loc["d", "vs_best"] and math.isnan(out.loc["d", "worst_case_mAP_sd"])
    assert out.loc["d", "vs_best"].endswith("; on the seeds both have (0): 5.00 below")  # 10 vs 5 on seed 0
    assert "seeds both have" not in out.loc["b", "vs_best"]  # same seeds: the means already compare
    # b vs a per seed: +1, 0, -1 -> mean 0, t(2) interval 0 +- 4.30 * 1 / sqrt(3)
    assert out.loc["b", "vs_best"].endswith("; paired on seeds 0,1,2: best - this 0.00 (95 % CI -2.48 to 2.48): "
                                            "within seed spread")
    assert "paired" not in out.loc["a", "vs_best"]
    assert list(out.index) == ["a", "b", "d", "c"]  # ordered by the worst-case mean


def test_the_best_is_among_the_recipes_with_the_most_seeds():
    """A one-seed recipe above the three-seed ones is not the reference (every comparison with it would be 'not
    separable'); it is named as above the best."""
    frame = pd.DataFrame(_summary("three", [10.0, 11.0, 12.0]) + _summary("other", [5.0, 6.0, 7.0])
                         + _summary("lucky", [20.0]))
    out = seed_summary(frame).set_index("defense")
    assert out.loc["three", "vs_best"] == "best"
    assert out.loc["other", "vs_best"].startswith("5.00 below the best, seed sds add to 2.00: separated")
    assert out.loc["lucky", "vs_best"].startswith("9.00 above the best; not separable (this recipe has one seed)")
    assert out.loc["lucky", "vs_best"].endswith("; on the seeds both have (0): 10.00 above")


def test_the_seeds_board_pairs_a_steady_gap_that_a_seed_wide_shift_hides():
    """Seeds that move both recipes alike (synthped draws its data from the seed) blow up the sds; the
    gap within each seed is steady, and the paired interval calls it where the sd rule cannot."""
    frame = pd.DataFrame(_summary("best", [10.0, 20.0, 30.0]) + _summary("other", [9.0, 19.1, 28.9]))
    out = seed_summary(frame).set_index("defense")
    assert "within seed spread; paired on seeds 0,1,2" in out.loc["other", "vs_best"]
    assert out.loc["other", "vs_best"].endswith(": separated")


def test_rows_on_another_test_set_share_no_mean():
    """Rows made before --data-seed drew their data with their training seed: seed 1's row of 'old' is on
    another test set and stays out of the mean; a custom data seed named in the settings is its own recipe."""
    fixed = _summary("new", [8.0, 9.0, 10.0])
    old = _summary("old", [8.0, 30.0])
    for row in old:
        row["data_seed"] = ""  # not recorded: its training seed drew the data
    custom = [dict(r, settings="data-seed=5", data_seed="5") for r in _summary("new", [1.0, 2.0])]
    out = seed_summary(pd.DataFrame(fixed + old + custom))
    by_recipe = out.set_index(["defense", "settings"])
    assert by_recipe.loc[("old", ""), "n"] == 1 and by_recipe.loc[("old", ""), "worst_case_mAP_mean"] == 8.0
    assert by_recipe.loc[("new", ""), "n"] == 3
    assert by_recipe.loc[("new", "data-seed=5"), "n"] == 2


def test_the_seeds_board_gives_the_query_interval_beside_the_training_seed_sd():
    frame = pd.DataFrame(_summary("a", [10.0, 12.0, 14.0]) + _summary("b", [5.0, 6.0]))
    frame["worst_case_mAP_low"], frame["worst_case_mAP_high"] = frame["worst_case_mAP"] - 2, frame["worst_case_mAP"] + 3
    frame.loc[4, "worst_case_mAP_low"] = math.nan  # a seed of b made before intervals were recorded
    out = seed_summary(frame).set_index("defense")
    assert out.loc["a", "worst_case_mAP_ci_low"] == pytest.approx(10.0)
    assert out.loc["a", "worst_case_mAP_ci_high"] == pytest.approx(15.0)
    assert math.isnan(out.loc["b", "worst_case_mAP_ci_low"]) and math.isnan(out.loc["a", "clean_mAP_ci_low"])
    columns = list(out.reset_index().columns)
    assert columns.index("worst_case_mAP_sd") + 1 == columns.index("worst_case_mAP_ci_low")


def test_run_with_seeds_trains_and_scores_each_and_writes_the_seeds_board(tmp_path):
    from benchmark.cli.main import main
    from tests.conftest import TINY_SYNTHPED

    data = ",".join(f"{k}={v}" for k, v in TINY_SYNTHPED.items())
    argv = ["run", "--defense", "none", "--attack", "fgsm", "--epochs", "1", "--seeds", "0,1", "--dataset-opt",
            data, "--height", "64", "--width", "32", "--device", "cpu", "--results-dir", str(tmp_path / "r"),
            "--leaderboard-dir", str(tmp_path / "b"), "--allow-dirty"]
    assert main(argv) == 0
    assert len(list((tmp_path / "r").glob("*/metrics.json"))) == 2
    seeds = pd.read_csv(tmp_path / "b" / "custom" / "seeds-synthped.csv")
    assert seeds["n"].tolist() == [2] and seeds["seeds"].astype(str).tolist() == ["0,1"]
    rows = pd.read_csv(tmp_path / "b" / "custom" / "synthped.csv", dtype=str)
    assert rows["data_digest"].nunique() == 1 and set(rows["data_seed"]) == {"0"}  # two trainings, one test set
    assert main([*argv[:-1], "--seeds", "0,x"]) == 2  # a bad list fails before any training
