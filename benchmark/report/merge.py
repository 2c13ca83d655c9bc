"""Merge boards written elsewhere (a cluster, a worktree at a fixed commit) into a leaderboard folder.

Rows and per-run summaries are upserted as the runs themselves upserted them, oldest run first, so
the board rules apply unchanged: a row replaces the one with the same key (its full specification),
a worst case that includes a suite is never replaced by one without, a summary that covers more
attacks wins, and the seeds board is rebuilt. Summaries are taken from the source's summary board,
not recomputed: a source run whose rows a later run replaced keeps the summary of its full rows.
Rows go to the board their own data set and settings name (official only with standard settings).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.core.errors import BenchmarkError
from benchmark.report.boards import (
    SUMMARY_TEXT,
    board_paths,
    check_boards,
    read_board,
    upsert_rows,
    upsert_summaries,
)


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: v for k, v in r.items()} for r in frame.to_dict("records")]


def _routed(frames: list[pd.DataFrame]) -> dict[tuple[str, bool], pd.DataFrame]:
    """The rows of `frames` grouped by the board their own specification names: their data set, and official
    only with standard settings (`settings` empty), whichever file they were read from."""
    frames = [f for f in frames if not f.empty]
    if not frames:
        return {}
    frame = pd.concat(frames, ignore_index=True)
    official = frame["settings"].fillna("").astype(str) == ""
    return {(str(dataset), bool(is_official)): rows
            for (dataset, is_official), rows in frame.groupby([frame["dataset"].astype(str), official], sort=True)}


def merge_boards(source: str | Path, into: str | Path, datasets: list[str] | None = None) -> dict[str, int]:
    """Upsert every run on `source`'s boards (official and custom) into `into`; returns runs merged per board.

    Every board of both folders is checked first (`check_board`); rows go to the board of their own data
    set and settings, not to the file they sat in, so a toy row on a copied official board lands on the
    custom one.
    """
    source = Path(source)
    if not source.is_dir():
        raise BenchmarkError(f"merge: {source} is not a folder; give the --leaderboard-dir the runs wrote to")
    if source.resolve() == Path(into).resolve():
        raise BenchmarkError("merge: the source and the target are the same folder; name another --leaderboard-dir")
    check_boards(source)
    check_boards(Path(into))
    skip = ("summary-", "seeds-", "throughput")
    found = {p.stem for folder in (source, source / "custom") for p in folder.glob("*.csv")
             if not p.stem.startswith(skip)}
    names = datasets or sorted(found)
    boards, summaries = [], []
    for dataset in names:  # read everything before writing anything
        for official in (True, False):
            board_path, summary_path = board_paths(source, dataset, official)
            boards.append(read_board(board_path))
            summaries.append(read_board(summary_path, SUMMARY_TEXT))
    rows = _routed(boards)
    if not rows:
        raise BenchmarkError(f"merge: no board (<dataset>.csv) of {', '.join(names) or 'any data set'} in {source}")
    summary_rows = _routed(summaries)
    merged: dict[str, int] = {}
    for (dataset, official), board in rows.items():
        target_board, target_summary = board_paths(into, dataset, official)
        runs = board.groupby("run_id", sort=False)
        for _, run_rows in sorted(runs, key=lambda item: (item[1]["date"].min(), item[0])):
            upsert_rows(target_board, _records(run_rows))
        summary = summary_rows.get((dataset, official), pd.DataFrame())
        if not summary.empty:
            upsert_summaries(target_summary, _records(summary.sort_values(["date", "run_id"], kind="stable")))
        merged[f"{dataset}{'' if official else ' (custom)'}"] = runs.ngroups
    return merged
