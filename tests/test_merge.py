"""`benchmark merge`: runs written elsewhere land on the boards exactly as if they had been written there."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from benchmark.cli.main import main
from benchmark.report.boards import write_leaderboards
from benchmark.report.merge import merge_boards
from tests.test_leaderboard import clean_row, make_row


def _run(defense: str, run_id: str, date: str, fna: float, seed: int = 0, settings: str = "") -> list:
    rows = [clean_row(defense, seed), make_row(defense, "fna", mAP=fna, seed=seed),
            make_row(defense, "sma", mAP=fna + 5, seed=seed)]
    return [dataclasses.replace(r, run_id=run_id, date=date, settings=settings, allow_dirty=False,
                                training_quality="id_fidelity=0.79;cam_fidelity=0.83") for r in rows]


def _files(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*.csv"))}


def test_merging_into_an_empty_folder_reproduces_the_boards_byte_for_byte(tmp_path):
    source, direct, target = tmp_path / "source", tmp_path / "direct", tmp_path / "target"
    runs = [_run("ddid", "a", "2026-01-01T00:00:00Z", 10.0), _run("ddid", "b", "2026-01-02T00:00:00Z", 12.0, seed=1),
            _run("metric-at", "c", "2026-01-03T00:00:00Z", 9.0),
            _run("ddid", "d", "2026-01-04T00:00:00Z", 3.0, settings="split=validation")]
    for rows in runs:
        official = not rows[0].settings
        write_leaderboards(rows, source, official=official)
        write_leaderboards(rows, direct, official=official)
    assert merge_boards(source, target) == {"toy": 3, "toy (custom)": 1}
    assert _files(target) == _files(direct)
    merge_boards(source, target)  # idempotent
    assert _files(target) == _files(direct)


def test_a_merged_run_replaces_the_older_row_with_the_same_specification(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    write_leaderboards(_run("ddid", "old", "2026-01-01T00:00:00Z", 10.0), target)
    write_leaderboards(_run("metric-at", "kept", "2026-01-01T00:00:00Z", 8.0), target)
    write_leaderboards(_run("ddid", "new", "2026-02-01T00:00:00Z", 4.0), source)
    merge_boards(source, target)
    board = pd.read_csv(target / "toy.csv")
    assert set(board["run_id"]) == {"new", "kept"} and len(board) == 6
    assert board.loc[(board["defense"] == "ddid") & (board["attack"] == "fna"), "mAP"].item() == 4.0


def test_merge_refuses_bad_input_in_one_line(tmp_path, capsys):
    assert main(["merge", str(tmp_path / "nowhere"), "--leaderboard-dir", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert main(["merge", str(tmp_path / "empty"), "--leaderboard-dir", str(tmp_path / "t")]) == 2
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "toy.csv").write_text("a,b\n1,2\n")
    with pytest.raises(Exception, match="not a leaderboard"):
        merge_boards(tmp_path / "junk", tmp_path / "t")
    assert not (tmp_path / "t").exists()  # nothing written on a refusal


def test_rows_are_merged_onto_the_board_their_own_specification_names(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    write_leaderboards(_run("ddid", "a", "2026-01-01T00:00:00Z", 10.0), source)
    board = pd.read_csv(source / "toy.csv", dtype=str, keep_default_na=False)
    stray = board.assign(settings="epochs=1", run_id="toy")  # a toy run copied onto the official file
    other = board.assign(dataset="pku", run_id="p")          # a row of another data set in it
    pd.concat([board, stray, other]).to_csv(source / "toy.csv", index=False)
    merge_boards(source, target)
    assert set(pd.read_csv(target / "toy.csv")["run_id"]) == {"a"}
    assert set(pd.read_csv(target / "custom" / "toy.csv")["run_id"]) == {"toy"}
    assert set(pd.read_csv(target / "pku.csv")["run_id"]) == {"p"}


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b.iloc[:0], "has no rows"),
    (lambda b: b.drop(columns=["mAP"]), "no column mAP"),
    (lambda b: b.assign(seed="zero"), "line 2, column seed: 'zero' is not an integer"),
    (lambda b: b.assign(mAP=["12.5", "many", "3"]), "line 3, column mAP: 'many' is not a number"),
    (lambda b: b.assign(dataset="../../x"), "column dataset: '../../x' is not a data set name"),
])
@pytest.mark.parametrize("command", ["merge", "table", "plots", "site"])
def test_every_board_reader_names_the_first_problem_in_one_line(tmp_path, capsys, corrupt, message, command):
    boards = tmp_path / "boards"
    write_leaderboards(_run("ddid", "a", "2026-01-01T00:00:00Z", 10.0), boards)
    board = pd.read_csv(boards / "toy.csv", dtype=str, keep_default_na=False)
    corrupt(board).to_csv(boards / "toy.csv", index=False)
    before = _files(boards)
    argv = {"merge": ["merge", str(boards), "--leaderboard-dir", str(tmp_path / "target")],
            "table": ["table", "--dataset", "toy", "--leaderboard-dir", str(boards)],
            "plots": ["plots", "--leaderboard-dir", str(boards), "--results-dir", str(tmp_path / "r"),
                      "--out", str(tmp_path / "figures")],
            "site": ["site", "--leaderboard-dir", str(boards), "--results-dir", str(tmp_path / "r"),
                     "--out", str(tmp_path / "site")]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "toy.csv" in err and len(err.splitlines()) == 1, err
    assert _files(boards) == before and not (tmp_path / "target").exists()


@pytest.mark.parametrize("record", ["config.json", "metrics.json"])
def test_a_run_folder_with_broken_json_is_named_in_one_line(tmp_path, capsys, record):
    from benchmark.report.plots import replot_run
    from benchmark.report.site import _flag_messages

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / record).write_text("{not json")
    with pytest.raises(Exception, match=f"{record} is not valid JSON"):
        replot_run(folder) if record == "config.json" else _flag_messages(folder)
