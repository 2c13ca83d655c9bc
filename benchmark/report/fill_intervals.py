"""Intervals for published rows made before runs recorded them, computed from their committed records.

A published run keeps its per-query scores (`results/<run-id>/per_query.csv`), so the 95 % identity
bootstrap a run computes today (`benchmark.report.runs.intervals`) can be computed for it after the
fact. Filling is part of publishing (`publish --fill-intervals`, the only writer of the official
boards): it adds interval columns where they are empty and changes no measured number. A row is filled
only when its record reproduces it: the record's mean must equal the row's mAP (and rank-1) to the
record's rounding, else the row is left empty and counted. The per-query record holds six decimals of
a fraction, so a filled end can differ from a live run's by about 1e-4 AP points.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from benchmark.core.enums import Seen
from benchmark.core.intervals import identity_bootstrap
from benchmark.core.protocol import STANDARD_EPS_LABEL
from benchmark.report.boards import SUMMARY_TEXT, board_kind, read_board, seed_summary, seeds_path, write_csv

#: a record reproduces a row when their means agree this closely (AP points; the record's rounding is 5e-5)
TOLERANCE = 0.01


@dataclass
class FillReport:
    """What filling did to one board: rows filled, rows already with intervals, rows whose record is missing
    or does not reproduce them (`unmatched`, one line each)."""

    board: Path
    filled: int = 0
    present: int = 0
    unmatched: list[str] = field(default_factory=list)


def _score_interval(record: pd.DataFrame, column: str, expected: float) -> tuple[float, float] | None:
    """(low, high) of a per-query score column in percent, or None when the record lacks it or its mean is not
    `expected` (the record is not this row's)."""
    if column not in record:
        return None
    values = record[column].to_numpy(dtype=np.float64) * 100
    if np.isnan(values).all() or not math.isclose(float(np.nanmean(values)), expected, abs_tol=TOLERANCE):
        return None
    return identity_bootstrap(values, record["pid"].to_numpy())


class _Records:
    """Per-query records of published runs, read once each."""

    def __init__(self, results: Path) -> None:
        self.results = results
        self._cache: dict[str, pd.DataFrame | None] = {}

    def __call__(self, run_id: str) -> pd.DataFrame | None:
        if run_id not in self._cache:
            path = self.results / run_id / "per_query.csv"
            self._cache[run_id] = pd.read_csv(path) if run_id and path.is_file() else None
        return self._cache[run_id]


def _fill(frame: pd.DataFrame, records: _Records, report: FillReport,
          targets: dict[str, tuple[str, str, str]], tag_of: Callable[[pd.Series, str], str | None]) -> None:
    """Fill `frame` in place. `targets` maps a board column prefix to (mean column, record suffix, label);
    `tag_of(row, prefix)` names the row's score in the record (`clean`, `fna@8/255`) or None."""
    for i, row in frame.iterrows():
        for prefix, (mean_column, suffix, label) in targets.items():
            low_column, high_column = f"{prefix}_low", f"{prefix}_high"
            if pd.notna(row.get(low_column)) and pd.notna(row.get(high_column)):
                report.present += 1
                continue
            if pd.isna(row.get(mean_column)):
                continue
            record, tag = records(str(row["run_id"])), tag_of(row, prefix)
            ends = None if record is None or tag is None else _score_interval(record, f"{tag}_{suffix}",
                                                                                float(row[mean_column]))
            if ends is None:
                report.unmatched.append(f"{row['run_id']} {label} {tag}: " + (
                    "no per_query.csv in results/" if record is None else "its record does not reproduce the row"))
                continue
            frame.at[i, low_column], frame.at[i, high_column] = ends
            report.filled += 1


def _row_tag(row: pd.Series, prefix: str) -> str | None:
    return "clean" if row["seen"] == Seen.CLEAN.value else f"{row['attack']}@{row['eps']}"


def _summary_tag(row: pd.Series, prefix: str) -> str | None:
    if prefix == "clean_mAP":
        return "clean"
    suite = str(row.get("suite") or "")
    return f"{suite}@{STANDARD_EPS_LABEL}" if suite else None


def fill_board(path: Path, results: Path, records: _Records | None = None) -> FillReport:
    """Fill the empty interval columns of one official board (`<dataset>.csv` or `summary-<dataset>.csv`) from
    its runs' records in `results`; a summary's seeds board is rebuilt beside it. Writes only when it fills."""
    kind, records = board_kind(path), records or _Records(results)
    report = FillReport(path)
    if kind == "row":
        text, tag_of = None, _row_tag
        targets = {"mAP": ("mAP", "ap", "mAP"), "R1": ("R1", "r1", "R1")}
    elif kind == "summary":
        text, tag_of = SUMMARY_TEXT, _summary_tag
        targets = {"clean_mAP": ("clean_mAP", "ap", "clean mAP"),
                   "worst_case_mAP": ("worst_case_mAP", "ap", "worst-case mAP"),
                   "worst_case_R1": ("worst_case_R1", "r1", "worst-case R1")}
    else:
        return report
    with FileLock(str(path) + ".lock", timeout=600):
        frame = read_board(path, text) if text else read_board(path)
        if frame.empty:
            return report
        for prefix in targets:
            for end in ("low", "high"):
                if f"{prefix}_{end}" not in frame:
                    frame[f"{prefix}_{end}"] = math.nan
        _fill(frame, records, report, targets, tag_of)
        if report.filled:
            write_csv(frame, path)
            if kind == "summary":  # from the board as written (four decimals), as every later upsert computes it
                write_csv(seed_summary(read_board(path, text)), seeds_path(path))
    return report


def fill_intervals(boards: Path, results: Path) -> list[FillReport]:
    """Fill every official board in `boards` (per-attack boards first, then summaries and their seeds boards)."""
    records = _Records(results)
    paths = sorted(p for p in boards.glob("*.csv") if board_kind(p) in ("row", "summary"))
    return [fill_board(p, results, records) for p in sorted(paths, key=lambda p: board_kind(p) == "summary")]
