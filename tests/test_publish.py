"""Only `publish` writes the official records, and only runs that pass the admission rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from benchmark.core.errors import BenchmarkError
from benchmark.report.boards import SUMMARY_TEXT, read_board
from benchmark.report.publish import publish

REPO = Path(__file__).resolve().parents[1]
RUN = "20261125-030644-synthped-none-reidnet-s-s0-c81b83"  # an official run: standard suite, convergence check


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
        frame[frame["defense"] != "none"].to_csv(boards / name, index=False)
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
            checkpoint="newer", train_date="2027-01-01T00:00:00Z")),
        "no-rows": lambda: _edit_rows(setting, lambda f: f.iloc[:0]),
    }
    edits[case]()
    boards = setting[3]
    before = {p.name: p.read_bytes() for p in boards.glob("*.csv")}
    with pytest.raises(BenchmarkError, match=message) as err:
        _publish(setting, yes=True)
    assert len(str(err.value).splitlines()) == 1 and RUN in str(err.value)
    assert {p.name: p.read_bytes() for p in boards.glob("*.csv")} == before


def test_unknown_or_hostile_run_names_are_refused(setting):
    ws_runs, ws_boards, results, boards = setting
    for name in ("nope", "../../etc"):
        with pytest.raises(BenchmarkError, match="no run folder"):
            publish([name], ws_runs, ws_boards, results, boards, say=lambda line: None)
