"""Merge boards written elsewhere (a cluster, a worktree at a fixed commit) into a leaderboard folder.

Rows and per-run summaries are upserted as the runs themselves upserted them, oldest run first, so
the board rules apply unchanged: a row replaces the one with the same key (its full specification),
a worst case that includes a suite is never replaced by one without, a summary that covers more
attacks wins, and the seeds board is rebuilt. Summaries are taken from the source's summary board,
not recomputed: a source run whose rows a later run replaced keeps the summary of its full rows.
Official boards merge into official boards and custom ones (`custom/`) into custom ones.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.core.errors import BenchmarkError
from benchmark.report.boards import (
    ROW_KEY,
    SUMMARY_KEY,
    SUMMARY_TEXT,
    board_paths,
    read_board,
    upsert_rows,
    upsert_summaries,
)


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: v for k, v in r.items()} for r in frame.to_dict("records")]


def _checked(frame: pd.DataFrame, key: tuple[str, ...], what: Path) -> pd.DataFrame:
    missing = [c for c in (*key, "run_id", "date") if c not in frame]
    if missing:
        raise BenchmarkError(f"merge: {what} is not a leaderboard (no column {', '.join(missing)})")
    return frame


def merge_boards(source: str | Path, into: str | Path, datasets: list[str] | None = None) -> dict[str, int]:
    """Upsert every run on `source`'s boards (official and custom) into `into`; returns runs merged per board."""
    source = Path(source)
    if not source.is_dir():
        raise BenchmarkError(f"merge: {source} is not a folder; give the --leaderboard-dir the runs wrote to")
    if source.resolve() == Path(into).resolve():
        raise BenchmarkError("merge: the source and the target are the same folder; name another --leaderboard-dir")
    skip = ("summary-", "seeds-", "throughput")
    found = {p.stem for folder in (source, source / "custom") for p in folder.glob("*.csv")
             if not p.stem.startswith(skip)}
    names = datasets or sorted(found)
    plan = []
    for dataset in names:  # read and check everything before writing anything
        for official in (True, False):
            board_path, summary_path = board_paths(source, dataset, official)
            board = read_board(board_path)
            if board.empty:
                continue
            summary = read_board(summary_path, SUMMARY_TEXT)
            plan.append((dataset, official, _checked(board, ROW_KEY, board_path),
                         _checked(summary, SUMMARY_KEY, summary_path) if not summary.empty else summary))
    if not plan:
        raise BenchmarkError(f"merge: no board (<dataset>.csv) of {', '.join(names) or 'any data set'} in {source}")
    merged: dict[str, int] = {}
    for dataset, official, board, summary in plan:
        target_board, target_summary = board_paths(into, dataset, official)
        runs = board.groupby("run_id", sort=False)
        for _, rows in sorted(runs, key=lambda item: (item[1]["date"].min(), item[0])):
            upsert_rows(target_board, _records(rows))
        if not summary.empty:
            upsert_summaries(target_summary, _records(summary.sort_values(["date", "run_id"], kind="stable")))
        merged[f"{dataset}{'' if official else ' (custom)'}"] = runs.ngroups
    return merged
