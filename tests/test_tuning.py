"""Fair tuning: the same budget per defense, random draws from its declared space, scored on validation identities."""

from __future__ import annotations

import dataclasses

import pytest

from benchmark.ablation import step_label
from benchmark.arguments import build_parser
from benchmark.errors import BenchmarkError
from benchmark.leaderboard import write_leaderboards
from benchmark.sweep import expand
from benchmark.tuning import candidates, report
from tests.test_leaderboard import clean_row, make_row
from tests.test_sweep import sweep_argv


@pytest.mark.parametrize("defense", ["ddid", "metric-at"])
def test_candidates_are_the_defaults_then_distinct_seeded_draws_from_the_space(defense):
    from defenses.base import DEFENSES

    picks = candidates(defense, 4)
    assert picks[0] == () and len(picks) == 4 and picks == candidates(defense, 4)
    assert len({step_label(defense, p) for p in picks}) == 4
    space = DEFENSES.get(defense).search_space
    for draw in picks[1:]:
        options = dict(o.split("=", 1) for o in draw)
        assert set(options) == set(space) and all(options[k] in space[k] for k in space)
    assert candidates(defense, 2) == picks[:2]  # a bigger budget extends a smaller one


def test_tune_expands_into_validation_cells_for_every_candidate(tmp_path):
    argv = [a for a in sweep_argv(tmp_path) if a not in ("--defense", "none,metric-at")]
    cells = expand(build_parser().parse_args([*argv, "--tune", "metric-at", "--budget", "3"]))
    assert len(cells) == 3 * 2 * 2  # candidates x seeds x (train, eval)
    assert all(c.argv[c.argv.index("--split") + 1] == "validation" for c in cells)
    with pytest.raises(BenchmarkError, match="declares no search space"):
        expand(build_parser().parse_args([*argv, "--tune", "none"]))
    with pytest.raises(BenchmarkError, match="validation identities only"):
        expand(build_parser().parse_args([*argv, "--tune", "metric-at", "--split", "test"]))


def _validation_run(label: str, worst: float, clean: float) -> list:
    settings = "split=validation"
    rows = [dataclasses.replace(clean_row(label), mAP=clean, clean_mAP=clean),
            dataclasses.replace(make_row(label, "standard-v1", "worst-case", worst), suite="standard-v1")]
    return [dataclasses.replace(r, settings=settings, run_id=f"{label}-val", suite="standard-v1") for r in rows]


def test_report_chooses_the_best_validation_worst_case_per_defense(tmp_path):
    picks = candidates("metric-at", 3)
    for draw, worst in zip(picks, (5.0, 7.5, 6.0), strict=True):
        write_leaderboards(_validation_run(step_label("metric-at", draw), worst, 60.0), tmp_path, official=False)
    frame = report(tmp_path, "toy", ["metric-at"], 3)
    assert len(frame) == 3 and frame["chosen"].sum() == 1
    chosen = frame[frame["chosen"]].iloc[0]
    assert chosen["candidate"] == 1 and chosen["val_worst_case_mAP"] == 7.5
