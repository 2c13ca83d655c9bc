"""Only `publish` writes the official records, and only runs that pass the admission rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from benchmark.core.errors import BenchmarkError
from benchmark.report.backfill import backfill, backfill_board
from benchmark.report.boards import SUMMARY_TEXT, read_board
from benchmark.report.publish import publish

REPO = Path(__file__).resolve().parents[1]
RUN = "20261205-091238-synthped-goat-reidnet-s-s0-995997"  # an official run: every attack, suite, convergence check


@pytest.fixture
def setting(tmp_path):
    """A workspace holding one official run (folder and rows), and a copy of the official records."""
    ws_runs, ws_boards = tmp_path / "ws" / "runs", tmp_path / "ws" / "leaderboards"
    shutil.copytree(REPO / "results" / RUN, ws_runs / RUN)
    ws_boards.mkdir(parents=True)
    for name, text in (("synthped.csv", None), ("summary-synthped.csv", SUMMARY_TEXT)):
        frame = read_board(REPO / "leaderboards" / name, *(() if text is None else (text,)))
        frame[frame["run_id"] == RUN].to_csv(ws_boards / name, index=False)
    boards, results = tmp_path / "official" / "leaderboards", tmp_path / "official" / "results"
    shutil.copytree(REPO / "leaderboards", boards, ignore=shutil.ignore_patterns("figures", "site", "studies"))
    results.mkdir()
    return ws_runs, ws_boards, results, boards


def _publish(setting, yes=False):
    ws_runs, ws_boards, results, boards = setting
    return publish([RUN], ws_runs, ws_boards, results, boards, yes=yes, say=lambda line: None)


def test_republishing_a_published_run_leaves_the_boards_byte_identical(setting):
    *_, results, boards = setting
    before = {p.name: p.read_bytes() for p in boards.glob("*.csv")}
    _publish(setting)
    assert {p.name: p.read_bytes() for p in boards.glob("*.csv")} == before
    copied = {p.name for p in (results / RUN).iterdir()}
    assert {"config.json", "metrics.json", "per_query.csv", "ranking.json"} <= copied
    assert "examples.npz" in copied and not any(name.endswith((".png", ".pdf")) for name in copied)


def test_replacing_published_numbers_needs_yes(setting):
    *_, results, boards = setting
    _edit_rows(setting, lambda f: f.assign(mAP=f["mAP"].where(f["attack"] != "odfa", "1.0")))
    before = {p.name: p.read_bytes() for p in boards.glob("*.csv")}
    with pytest.raises(BenchmarkError, match="pass --yes"):
        _publish(setting)
    assert {p.name: p.read_bytes() for p in boards.glob("*.csv")} == before and not list(results.iterdir())
    _publish(setting, yes=True)
    board = pd.read_csv(boards / "synthped.csv", dtype=str, keep_default_na=False)
    assert (board[(board["run_id"] == RUN) & (board["attack"] == "odfa")]["mAP"].astype(float) == 1.0).all()


def test_a_new_run_is_published_without_yes(setting):
    ws_runs, ws_boards, results, boards = setting
    for name in ("synthped.csv", "summary-synthped.csv"):  # an official board without this model's rows
        frame = pd.read_csv(boards / name, dtype=str, keep_default_na=False)
        frame[frame["defense"] != "goat"].to_csv(boards / name, index=False)
    _publish(setting)
    board = pd.read_csv(boards / "synthped.csv", dtype=str, keep_default_na=False)
    assert set(board[board["run_id"] == RUN]["attack"]) >= {"standard-v1", "worst-case", "odfa"}


def _edit_config(setting, change):
    path = setting[0] / RUN / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def _edit_rows(setting, change):
    path = setting[1] / "synthped.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    path.write_text(change(frame).to_csv(index=False))


@pytest.mark.parametrize("case, message", [
    ("custom", "a custom run"),
    ("dirty", "uncommitted code changes"),
    ("no-suite", "without a published suite"),
    ("no-convergence", "convergence check"),
    ("threads", "the board's rows were made at cpu-x86_64-1threads"),
    ("fewer-attacks", "would remove"),
    ("no-rows", "rows are not on the workspace's official board"),
])
def test_each_admission_rule_refuses_in_one_line(setting, case, message):
    edits = {
        "custom": lambda: _edit_config(setting, lambda c: c["spec"].update(official=False, settings="epochs=1")),
        "dirty": lambda: _edit_config(setting, lambda c: c["provenance"].update(git_commit="abc+dirty")),
        "no-suite": lambda: _edit_config(setting, lambda c: c["spec"].update(suite=None)),
        "no-convergence": lambda: _edit_config(setting, lambda c: c["spec"].update(check_convergence=False)),
        "threads": lambda: _edit_rows(setting, lambda f: f.assign(device="cpu-x86_64-2threads")),
        # a newer training of the model that ran fewer attacks would drop the published rows it does not cover
        "fewer-attacks": lambda: _edit_rows(setting, lambda f: f[f["attack"] != "odfa"].assign(
            checkpoint="newer", train_date="2027-01-01T00:00:00Z", model_digest="newer-weights")),
        "no-rows": lambda: _edit_rows(setting, lambda f: f.iloc[:0]),
    }
    edits[case]()
    boards = setting[3]
    before = {p.name: p.read_bytes() for p in boards.glob("*.csv")}
    with pytest.raises(BenchmarkError, match=message) as err:
        _publish(setting, yes=True)
    assert len(str(err.value).splitlines()) == 1 and RUN in str(err.value)
    assert {p.name: p.read_bytes() for p in boards.glob("*.csv")} == before


def test_runs_published_together_are_judged_together(setting):
    """A retrained model's attack run and its later suite run on the same checkpoint: the suite run's clean row
    replaced the attack run's in the workspace, so neither alone covers the published cells; together they do."""
    ws_runs, ws_boards, results, boards = setting
    # a new training: a new key and new weights (the published rows' digest would make it the same model)
    newer = dict(checkpoint="newer", train_date="2027-01-01T00:00:00Z", model_digest="newer-weights")
    other = RUN + "-v2"
    shutil.copytree(ws_runs / RUN, ws_runs / other)
    frame = pd.read_csv(ws_boards / "synthped.csv", dtype=str, keep_default_na=False).assign(**newer)
    published = pd.read_csv(boards / "synthped.csv", dtype=str, keep_default_na=False)
    model = published[(published["defense"] == "goat") & (published["seed"] == "0")]
    # the other run: the published cells the attack run lacks (its clean row among them)
    rest = model[~model["attack"].isin(set(frame["attack"]) - {"clean"})]
    assert "clean" in set(rest["attack"])
    pd.concat([frame[frame["attack"] != "clean"], rest.assign(run_id=other, **newer)]).to_csv(
        ws_boards / "synthped.csv", index=False)
    summary = pd.read_csv(ws_boards / "summary-synthped.csv", dtype=str, keep_default_na=False).assign(**newer)
    pd.concat([summary, summary.assign(run_id=other)]).to_csv(ws_boards / "summary-synthped.csv", index=False)
    for alone in (RUN, other):
        with pytest.raises(BenchmarkError, match="publish it together with the run that has them"):
            publish([alone], ws_runs, ws_boards, results, boards, yes=True, say=lambda line: None)
    publish([RUN, other], ws_runs, ws_boards, results, boards, yes=True, say=lambda line: None)
    board = pd.read_csv(boards / "synthped.csv", dtype=str, keep_default_na=False)
    goat = board[(board["defense"] == "goat") & (board["seed"] == "0")]
    assert set(goat["checkpoint"]) == {"newer"} and set(goat["run_id"]) == {RUN, other}


def test_unknown_or_hostile_run_names_are_refused(setting):
    ws_runs, ws_boards, results, boards = setting
    for name in ("nope", "../../etc"):
        with pytest.raises(BenchmarkError, match="no run folder"):
            publish([name], ws_runs, ws_boards, results, boards, say=lambda line: None)


LIVE = "20261204-022149-synthped-ddid-reidnet-s-s1-2641b7"  # published with intervals computed by the run itself
INTERVALS = ["mAP_low", "mAP_high", "R1_low", "R1_high"]


def _official_copy(tmp_path):
    boards = tmp_path / "leaderboards"
    shutil.copytree(REPO / "leaderboards", boards, ignore=shutil.ignore_patterns("figures", "site", "studies",
                                                                                "archive"))
    return boards


def test_filling_intervals_reproduces_the_runs_own_and_changes_no_measured_number(tmp_path):
    boards = _official_copy(tmp_path)
    board = read_board(boards / "synthped.csv")
    live = board[board["run_id"] == LIVE][INTERVALS].astype(float).reset_index(drop=True)
    assert live.notna().all().all()
    blanked = board.copy()
    blanked[INTERVALS] = float("nan")
    blanked.to_csv(boards / "synthped.csv", index=False)
    summary = read_board(boards / "summary-synthped.csv", SUMMARY_TEXT)
    ends = [c for c in summary.columns if c.endswith(("_low", "_high"))]
    summary.assign(**{c: float("nan") for c in ends}).to_csv(boards / "summary-synthped.csv", index=False)

    reports = {r.board.name: r for r in backfill(boards, REPO / "results")}

    assert reports["synthped.csv"].filled == 2 * len(board) and not reports["synthped.csv"].unmatched
    filled = read_board(boards / "synthped.csv")
    again = filled[filled["run_id"] == LIVE][INTERVALS].astype(float).reset_index(drop=True)
    assert ((again - live).abs() <= 2e-4).all().all()  # the record's six decimals, printed to four
    kept = [c for c in board.columns if c not in INTERVALS]
    assert filled[kept].astype(str).equals(board[kept].astype(str))
    assert (filled["mAP_low"] <= filled["mAP"] + 1e-9).all() and (filled["mAP"] <= filled["mAP_high"] + 1e-9).all()
    seeds = pd.read_csv(boards / "seeds-synthped.csv")
    assert seeds["worst_case_mAP_ci_low"].notna().all()  # every recipe, one seed or three, now has its interval


def test_filling_rebuilds_a_seeds_board_that_no_longer_matches_its_summary(tmp_path):
    """A change of the seeds board's rules (what `vs_best` compares with) reaches the committed file through the
    publish step, and only when the file differs."""
    boards = _official_copy(tmp_path)
    seeds = boards / "seeds-synthped.csv"
    current = seeds.read_text()
    seeds.write_text(current.replace("best", "stale"))
    report = backfill_board(boards / "summary-synthped.csv", REPO / "results")
    assert report.seeds_rebuilt and seeds.read_text() == current
    assert not backfill_board(boards / "summary-synthped.csv", REPO / "results").seeds_rebuilt


def test_a_row_its_record_does_not_reproduce_stays_empty_and_is_named(tmp_path):
    boards = _official_copy(tmp_path)
    board = read_board(boards / "synthped.csv")
    odfa = (board["run_id"] == RUN) & (board["attack"] == "odfa")
    board.loc[odfa, "mAP"] = board.loc[odfa, "mAP"].astype(float) + 1.0
    board.loc[board["run_id"] == RUN, INTERVALS] = float("nan")
    board.to_csv(boards / "synthped.csv", index=False)

    report = backfill_board(boards / "synthped.csv", REPO / "results")

    assert report.unmatched == [f"{RUN} mAP odfa@8/255: its record does not reproduce the row"]
    filled = read_board(boards / "synthped.csv")
    assert filled.loc[odfa, "mAP_low"].isna().all() and filled.loc[odfa, "R1_low"].notna().all()
    assert filled.loc[(filled["run_id"] == RUN) & ~odfa, "mAP_low"].notna().all()


def test_publish_needs_a_run_or_the_fill_flag(setting):
    ws_runs, ws_boards, results, boards = setting
    with pytest.raises(BenchmarkError, match="or pass --backfill"):
        publish([], ws_runs, ws_boards, results, boards, say=lambda line: None)
