"""Fair tuning: the same budget per defense, random draws from its declared space, scored on validation identities."""

from __future__ import annotations

import dataclasses

import pytest

from benchmark.cli.arguments import build_parser
from benchmark.cli.sweep import expand
from benchmark.core.errors import BenchmarkError
from benchmark.report.boards import write_leaderboards
from benchmark.report.tuning import candidates, report
from benchmark.run.spec import defense_label
from tests.test_leaderboard import clean_row, make_row
from tests.test_sweep import sweep_argv


@pytest.mark.parametrize("defense", ["ddid", "metric-at"])
def test_candidates_are_the_defaults_then_distinct_seeded_draws_from_the_space(defense):
    from defenses.base import DEFENSES

    picks = candidates(defense, 4)
    assert picks[0] == () and len(picks) == 4 and picks == candidates(defense, 4)
    assert len({defense_label(defense, p) for p in picks}) == 4
    space = DEFENSES.get(defense).search_space
    for draw in picks[1:]:
        options = dict(o.split("=", 1) for o in draw)
        assert set(options) == set(space) and all(options[k] in space[k] for k in space)
    assert candidates(defense, 2) == picks[:2]  # a bigger budget extends a smaller one


def test_tune_expands_into_validation_cells_for_every_candidate(tmp_path):
    argv = [a for a in sweep_argv(tmp_path) if a not in ("--defense", "none,metric-at")]
    cells = expand(build_parser().parse_args([*argv, "--tune", "metric-at", "--budget", "3"]))
    assert len(cells) == 3 * 2 * 2  # candidates x seeds x (train, eval)
    assert all(c.spec["split"] == "validation" for c in cells)
    with pytest.raises(BenchmarkError, match="declares no search space"):
        expand(build_parser().parse_args([*argv, "--tune", "none"]))
    with pytest.raises(BenchmarkError, match="validation identities only"):
        expand(build_parser().parse_args([*argv, "--tune", "metric-at", "--split", "test"]))


def _validation_run(label: str, worst: float, clean: float, dataset: str = "toy") -> list:
    settings = "split=validation"
    rows = [dataclasses.replace(clean_row(label), mAP=clean, clean_mAP=clean),
            dataclasses.replace(make_row(label, "standard-v1", "worst-case", worst), suite="standard-v1")]
    return [dataclasses.replace(r, settings=settings, run_id=f"{label}-val", suite="standard-v1", dataset=dataset,
                                train_dataset=dataset) for r in rows]


def test_report_chooses_the_best_validation_worst_case_per_defense(tmp_path):
    picks = candidates("metric-at", 3)
    for draw, worst in zip(picks, (5.0, 7.5, 6.0), strict=True):
        write_leaderboards(_validation_run(defense_label("metric-at", draw), worst, 60.0), tmp_path, official=False)
    frame = report(tmp_path, "toy", ["metric-at"], 3)
    assert len(frame) == 3 and frame["chosen"].sum() == 1
    chosen = frame[frame["chosen"]].iloc[0]
    assert chosen["candidate"] == 1 and chosen["val_worst_case_mAP"] == 7.5


def test_report_reads_candidate_labels_the_sweep_recorded_not_todays_defaults(tmp_path):
    """A change of defaults renames recipes; the report finds each candidate by the label it ran under."""
    import json

    from benchmark.cli.sweep import prepare

    sweep_dir, boards = tmp_path / "sweep", tmp_path / "boards"
    argv = [a for a in sweep_argv(tmp_path) if a not in ("--defense", "none,metric-at")]
    args = build_parser().parse_args([*argv, "--tune", "metric-at", "--budget", "2"])
    cells = expand(args)
    prepare(cells, sweep_dir, args)
    evals = [c for c in cells if c.kind == "eval"]
    assert {c.candidate for c in evals} == {0, 1} and all(c.recipe_label for c in evals)
    # the defaults candidate ran when the defaults were different: its cells recorded that label
    old = "metric-at[steps=3]"
    for cell in evals:
        if cell.candidate == 0:
            path = cell.folder(sweep_dir) / "cell.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "recipe_label": old}))
    drawn = defense_label("metric-at", candidates("metric-at", 2)[1])
    write_leaderboards(_validation_run(old, 9.0, 60.0, "synthped"), boards, official=False)
    write_leaderboards(_validation_run(drawn, 4.0, 60.0, "synthped"), boards, official=False)
    frame = report(boards, "synthped", ["metric-at"], 2, sweep_dir=sweep_dir)
    assert list(frame["label"]) == [old, drawn]
    assert (frame["labels"] == "recorded").all() and frame[frame["chosen"]].iloc[0]["candidate"] == 0
    # without the sweep's cells the labels are today's, and the old run is not found
    assert old not in set(report(boards, "synthped", ["metric-at"], 2)["label"])
