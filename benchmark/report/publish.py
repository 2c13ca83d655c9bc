"""`publish`: the only way a run reaches the official boards (`leaderboards/`) and run records (`results/`).

Runs write into the user's workspace; a maintainer publishes chosen runs. A run is admitted when it
is an official run (the protocol's standard settings), from a clean tree, made at the board's
thread count (floating-point results depend on it), with the standard suite and its convergence
check, and when it replaces no row of a run that covered more attacks (runs named together are judged
together: one may bring the cells the other lacks). Every refusal is one line
naming the run and the rule. Publication shows the rows it adds and replaces; replacing needs
`yes=True` (`--yes`). The run folder is copied without its pictures: `plots` and `site` redraw them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from attacks.suites import DEFAULT_SUITE, PUBLISHED_SUITES
from benchmark.core.atomic import atomic_folder
from benchmark.core.errors import BenchmarkError
from benchmark.report.backfill import backfill_board
from benchmark.report.boards import ROW_KEY, SUMMARY_TEXT, board_paths, read_board, upsert_rows, upsert_summaries
from benchmark.run.spec import safe_name

#: what a published run folder keeps: its records (figures are redrawn from them)
RECORDS = ("config.json", "metrics.json", "per_query.csv", "per_id_ap.csv", "ranking.json", "log.txt",
           "examples.npz")


@dataclass
class RunToPublish:
    """One run found in the workspace: its folder, configuration and rows."""

    run_id: str
    folder: Path
    config: dict
    rows: pd.DataFrame
    summary: pd.DataFrame
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)

    @property
    def dataset(self) -> str:
        """The data set whose boards the run's rows belong to."""
        return self.config["spec"]["data"]["name"]


def _load(run_id: str, runs: Path, boards: Path) -> RunToPublish:
    name = safe_name(run_id)
    folder = runs / name
    if name != run_id or not (folder / "config.json").is_file():
        raise BenchmarkError(f"publish {run_id}: no run folder {folder} with a config.json; name a run of "
                             f"{runs} (its folder name)")
    try:
        config = json.loads((folder / "config.json").read_text())
        dataset = config["spec"]["data"]["name"]
    except (OSError, ValueError, KeyError) as exc:
        raise BenchmarkError(f"publish {run_id}: {folder / 'config.json'} is not a run's configuration "
                             f"({type(exc).__name__}); rerun the run") from None
    board_path, summary_path = board_paths(boards, dataset, official=True)
    board, summary = read_board(board_path), read_board(summary_path, SUMMARY_TEXT)
    rows = board[board["run_id"] == run_id] if "run_id" in board else board.iloc[:0]
    return RunToPublish(run_id, folder, config, rows,
                        summary[summary["run_id"] == run_id] if "run_id" in summary else summary.iloc[:0])


def _refusal(run: RunToPublish, official: pd.DataFrame) -> str | None:
    """The first admission rule the run breaks, as one line, or None."""
    spec, prov = run.config["spec"], run.config.get("provenance", {})
    if not spec.get("official"):
        return f"a custom run (settings {spec.get('settings')}): only the protocol's standard settings are published"
    if run.config.get("allow_dirty") or str(prov.get("git_commit", "")).endswith("+dirty"):
        return "made from a tree with uncommitted code changes: commit, then run it again"
    if spec.get("suite") not in PUBLISHED_SUITES or not spec.get("check_convergence"):
        return (f"made without a published suite ({' or '.join(PUBLISHED_SUITES)}) and its convergence check: run "
                f"it with --attack all --check-convergence (the default suite is {DEFAULT_SUITE})")
    if run.rows.empty or run.summary.empty:
        return "its rows are not on the workspace's official board (was it run with --no-write?)"
    device = str(run.rows["device"].iloc[0])
    board_devices = set(official["device"].astype(str)) if "device" in official else set()
    if board_devices and device not in board_devices:
        return (f"made at {device}; the board's rows were made at {', '.join(sorted(board_devices))}: run it again "
                "with that thread count (--threads), as floating-point results depend on it")
    return None


def _diff(runs: list[RunToPublish], board_path: Path) -> str | None:
    """Upsert the runs (of one data set, in order) into a scratch copy of the official board, as publishing would;
    fill each run's added and replaced rows, and refuse (one line) when published rows would be lost (a newer
    training of a model keeps only its own rows: together, the runs must cover every attack cell its predecessor
    had). Runs published together are judged together: one run's attacks and another's suite run on the same
    checkpoint may each lack a cell the other brings."""
    with tempfile.TemporaryDirectory() as scratch:
        trial = Path(scratch) / board_path.name
        if board_path.is_file():
            shutil.copy2(board_path, trial)
        before = read_board(trial) if trial.is_file() else pd.DataFrame()
        for run in runs:
            upsert_rows(trial, run.rows.to_dict("records"))
        after = read_board(trial)
    keyed = {_key(r): r for _, r in before.iterrows()} if not before.empty else {}
    now = {_key(r): r for _, r in after.iterrows()}
    lost = [k for k in keyed if k not in now]
    if lost:
        cells = ", ".join(sorted({f"{k[4]}@{k[5]}" for k in lost}))
        return (f"would remove {len(lost)} published rows of the same model that it does not cover ({cells}): "
                "run those attacks too, or publish it together with the run that has them")
    by_id = {run.run_id: run for run in runs}
    for key, row in now.items():
        run = by_id.get(str(row["run_id"]))
        if run is None:
            continue
        label = " / ".join(key[2:6]) + f" / seed {key[6]}"
        if key not in keyed:
            run.added.append(f"+ {label}: mAP {float(row['mAP']):.2f}")
        elif str(keyed[key]["run_id"]) != run.run_id or float(keyed[key]["mAP"]) != float(row["mAP"]):
            run.replaced.append(f"~ {label}: mAP {float(keyed[key]['mAP']):.2f} -> {float(row['mAP']):.2f} "
                                f"(run {keyed[key]['run_id']})")
    return None


def _key(row: pd.Series) -> tuple[str, ...]:
    return tuple(str(row[c]) for c in ROW_KEY)


def publish(run_ids: list[str], workspace_runs: Path, workspace_boards: Path, results: Path, boards: Path,
            yes: bool = False, say: Callable[[str], None] = print) -> list[Path]:
    """Check every run against the admission rules, show the rows each adds and replaces, then publish them all
    (or none): run folders' records into `results`, rows and summaries onto the official `boards`."""
    if not run_ids:
        raise BenchmarkError("publish: name at least one run (a folder of your workspace's runs/), or pass "
                             "--backfill")
    runs = [_load(r, workspace_runs, workspace_boards) for r in run_ids]
    refusals = []
    for run in runs:
        reason = _refusal(run, read_board(board_paths(boards, run.dataset, official=True)[0]))
        if reason:
            refusals.append(f"publish {run.run_id}: refused, {reason}")
    for dataset in dict.fromkeys(run.dataset for run in runs):
        together = [run for run in runs if run.dataset == dataset]
        reason = None if refusals else _diff(together, board_paths(boards, dataset, official=True)[0])
        if reason:
            refusals.append(f"publish {', '.join(run.run_id for run in together)}: refused, {reason}")
    if len(refusals) == 1:
        raise BenchmarkError(refusals[0])
    if refusals:
        for line in refusals:
            say(line)
        raise BenchmarkError(f"publish: {len(refusals)} of {len(runs)} runs refused (above); nothing was published")
    for run in runs:
        say(f"{run.run_id}: adds {len(run.added)} rows, replaces {len(run.replaced)}")
        for line in run.added + run.replaced:
            say(f"  {line}")
    if any(run.replaced for run in runs) and not yes:
        raise BenchmarkError("publish: these runs replace published rows (listed above); pass --yes to replace them")
    written = []
    for run in runs:
        target = results / run.run_id
        if not target.exists():
            with atomic_folder(target) as tmp:
                for name in RECORDS:
                    if (run.folder / name).is_file():
                        shutil.copy2(run.folder / name, tmp / name)
        board_path, summary_path = board_paths(boards, run.dataset, official=True)
        upsert_rows(board_path, run.rows.to_dict("records"))
        upsert_summaries(summary_path, run.summary.to_dict("records"))
        written += [target, board_path, summary_path]
    for board in dict.fromkeys(p for p in written if p.suffix == ".csv"):
        backfill_board(board, results)  # cells older rows lack, from their records
    return written
