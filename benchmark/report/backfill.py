"""Columns that published rows made before the column existed lack, filled from their committed records.

A published run keeps its records (`results/<run-id>/`): `per_query.csv` holds its per-query scores, so
the 95 % identity bootstrap a run computes today (`benchmark.report.runs.intervals`) can be computed for
it after the fact; `config.json` holds its specification, whose data seed (`recorded_data_seed`: its
training seed, for runs made before `--data-seed`) says which test set it was scored on. Filling is
part of publishing (`publish --backfill`, the only writer of the official boards): it writes only empty
cells and changes no measured number. An interval is filled only when the record reproduces the row:
the record's mean must equal the row's mAP (or rank-1) to the record's rounding, else the cell stays
empty and the row is named. The record holds six decimals of a fraction, so a filled end can differ
from a live run's by about 1e-4 AP points.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from benchmark.core.atomic import atomic_write_text
from benchmark.core.enums import Seen
from benchmark.core.intervals import identity_bootstrap
from benchmark.core.protocol import STANDARD_EPS_LABEL
from benchmark.report.boards import (
    SUMMARY_TEXT,
    board_kind,
    csv_text,
    read_board,
    seed_summary,
    seeds_path,
    text_cell,
    write_csv,
)
from benchmark.report.records import read_json_record
from benchmark.run.spec import recorded_data_seed

#: a record reproduces a row when their means agree this closely (AP points; the record's rounding is 5e-5)
TOLERANCE = 0.01


@dataclass
class BackfillReport:
    """What filling did to one board: cells filled, cells already there, rows whose record is missing or does
    not reproduce them (`unmatched`, one line each)."""

    board: Path
    filled: int = 0
    present: int = 0
    unmatched: list[str] = field(default_factory=list)
    #: a summary's seeds board was rewritten because it no longer matched the summary (its rules changed)
    seeds_rebuilt: bool = False


class _Records:
    """Records of published runs, each read once."""

    def __init__(self, results: Path) -> None:
        self.results = results
        self._tables: dict[str, pd.DataFrame | None] = {}
        self._seeds: dict[str, str | None] = {}

    def per_query(self, run_id: str) -> pd.DataFrame | None:
        """The run's per-query scores, or None when it has no record."""
        if run_id not in self._tables:
            path = self.results / run_id / "per_query.csv"
            self._tables[run_id] = pd.read_csv(path) if run_id and path.is_file() else None
        return self._tables[run_id]

    def data_seed(self, run_id: str) -> str | None:
        """The data seed the run's specification records, or None when it has no record."""
        if run_id not in self._seeds:
            path = self.results / run_id / "config.json"
            self._seeds[run_id] = (str(recorded_data_seed(read_json_record(path)["spec"]))
                                   if run_id and path.is_file() else None)
        return self._seeds[run_id]


def _score_interval(record: pd.DataFrame, column: str, expected: float) -> tuple[float, float] | None:
    """(low, high) of a per-query score column in percent, or None when the record lacks it or its mean is not
    `expected` (the record is not this row's)."""
    if column not in record:
        return None
    values = record[column].to_numpy(dtype=np.float64) * 100
    if np.isnan(values).all() or not math.isclose(float(np.nanmean(values)), expected, abs_tol=TOLERANCE):
        return None
    return identity_bootstrap(values, record["pid"].to_numpy())


def _empty(value: object) -> bool:
    return text_cell(value) == ""


def _fill_intervals(frame: pd.DataFrame, records: _Records, report: BackfillReport,
                    targets: dict[str, tuple[str, str, str]], tag_of: Callable[[pd.Series, str], str | None]) -> None:
    """Fill `frame`'s interval cells in place. `targets` maps a column prefix to (mean column, record suffix,
    label); `tag_of(row, prefix)` names the row's score in the record (`clean`, `fna@8/255`) or None."""
    for i, row in frame.iterrows():
        for prefix, (mean_column, suffix, label) in targets.items():
            low_column, high_column = f"{prefix}_low", f"{prefix}_high"
            if not _empty(row.get(low_column)) and not _empty(row.get(high_column)):
                report.present += 1
                continue
            if _empty(row.get(mean_column)):
                continue
            record, tag = records.per_query(str(row["run_id"])), tag_of(row, prefix)
            ends = None if record is None or tag is None else _score_interval(record, f"{tag}_{suffix}",
                                                                                float(row[mean_column]))
            if ends is None:
                report.unmatched.append(f"{row['run_id']} {label} {tag}: " + (
                    "no per_query.csv in results/" if record is None else "its record does not reproduce the row"))
                continue
            frame.at[i, low_column], frame.at[i, high_column] = ends
            report.filled += 1


def _fill_data_seed(frame: pd.DataFrame, records: _Records, report: BackfillReport) -> None:
    """Fill empty `data_seed` cells in place from each run's specification."""
    for i, row in frame.iterrows():
        if not _empty(row.get("data_seed")):
            report.present += 1
            continue
        seed = records.data_seed(str(row["run_id"]))
        if seed is None:
            report.unmatched.append(f"{row['run_id']} data_seed: no config.json in results/")
            continue
        frame.at[i, "data_seed"] = seed
        report.filled += 1


def _row_tag(row: pd.Series, prefix: str) -> str | None:
    return "clean" if row["seen"] == Seen.CLEAN.value else f"{row['attack']}@{row['eps']}"


def _summary_tag(row: pd.Series, prefix: str) -> str | None:
    if prefix == "clean_mAP":
        return "clean"
    suite = str(row.get("suite") or "")
    return f"{suite}@{STANDARD_EPS_LABEL}" if suite else None


_TARGETS = {
    "row": ({"mAP": ("mAP", "ap", "mAP"), "R1": ("R1", "r1", "R1")}, _row_tag),
    "summary": ({"clean_mAP": ("clean_mAP", "ap", "clean mAP"),
                 "worst_case_mAP": ("worst_case_mAP", "ap", "worst-case mAP"),
                 "worst_case_R1": ("worst_case_R1", "r1", "worst-case R1")}, _summary_tag),
}


def backfill_board(path: Path, results: Path, records: _Records | None = None) -> BackfillReport:
    """Fill the empty interval and data-seed cells of one official board (`<dataset>.csv` or
    `summary-<dataset>.csv`) from its runs' records in `results`; a summary's seeds board is rebuilt beside it.
    Writes only when it fills."""
    kind, records = board_kind(path), records or _Records(results)
    report = BackfillReport(path)
    if kind not in _TARGETS:
        return report
    targets, tag_of = _TARGETS[kind]
    text = SUMMARY_TEXT if kind == "summary" else None
    with FileLock(str(path) + ".lock", timeout=600):
        frame = read_board(path, text) if text else read_board(path)
        if frame.empty:
            return report
        for column in [f"{p}_{end}" for p in targets for end in ("low", "high")]:
            if column not in frame:
                frame[column] = math.nan
        if "data_seed" not in frame:
            frame["data_seed"] = ""
        frame["data_seed"] = frame["data_seed"].astype(object)
        _fill_intervals(frame, records, report, targets, tag_of)
        _fill_data_seed(frame, records, report)
        if report.filled:
            write_csv(frame, path)
        if kind == "summary":  # from the board as written (four decimals), as every later upsert computes it
            report.seeds_rebuilt = _rebuild_seeds(path, read_board(path, text))
    return report


def _rebuild_seeds(summary_path: Path, summary: pd.DataFrame) -> bool:
    """Write the seeds board a summary derives, when the file differs from it (True when written)."""
    target, text = seeds_path(summary_path), csv_text(seed_summary(summary))
    if target.is_file() and target.read_text() == text:
        return False
    atomic_write_text(target, text)
    return True


def backfill(boards: Path, results: Path) -> list[BackfillReport]:
    """Fill every official board in `boards` (per-attack boards first, then summaries and their seeds boards)."""
    records = _Records(results)
    paths = sorted(p for p in boards.glob("*.csv") if board_kind(p) in _TARGETS)
    return [backfill_board(p, results, records) for p in sorted(paths, key=lambda p: board_kind(p) == "summary")]
