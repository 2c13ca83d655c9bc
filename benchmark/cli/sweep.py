"""Grid sweeps: defenses x seeds x data sets expanded into hashed, resumable cells (DomainBed style).

Each (data set, defense recipe, seed) gives one training cell (`train`) and one evaluation cell
(`run` with the sweep's attacks and ε list) that depends on it. A cell's folder is named by the hash
of its run specification and holds `cell.json` (the specification's JSON, how it runs and where it
writes), `log.txt`, and a `done` marker with its outputs, or `failed` with the error; `running`
while a worker holds it. A worker calls `execute(RunSpec.from_json(...))`: every option of `run`
reaches a cell through its specification, and nothing is parsed twice. A rerun skips done cells,
rewrites the others' `cell.json` with its own runtime and write options, and redoes failed,
unfinished or interrupted ones. Launchers come from `benchmark.cli.launchers`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from benchmark.cli.arguments import (
    external_from_args,
    runtime_from_args,
    seeds_from_args,
    spec_from_args,
    writer_from_args,
)
from benchmark.cli.logs import configure_logging
from benchmark.cli.printing import print_outcome
from benchmark.core.atomic import atomic_write_text
from benchmark.core.errors import BenchmarkError
from benchmark.core.options import parse_kv
from benchmark.core.paths import boards_dir, home_dir
from benchmark.core.provenance import command_argv


@dataclass(frozen=True)
class Cell:
    """One unit of work: a training or an evaluation run, named by its run specification's hash."""

    id: str
    kind: str                # train or eval
    spec: dict[str, Any] = field(hash=False, compare=False)  # RunSpec.to_json()
    label: str = ""
    depends: str | None = None
    #: the defense recipe's canonical label when the sweep was expanded (labels drop options equal to
    #: today's defaults, so a later change of defaults must not rename what this cell ran)
    recipe_label: str = ""
    #: the recipe's --defense-opt values (key=value) as the sweep gave them
    recipe_options: tuple[str, ...] = ()
    #: index of the tuning candidate this cell runs (0 = the defaults at the time), None outside --tune
    candidate: int | None = None

    def folder(self, sweep_dir: Path) -> Path:
        """The cell's folder in a sweep."""
        return sweep_dir / "cells" / self.id


def _split(text: str) -> list[str]:
    return [p.strip() for p in str(text).split(",") if p.strip()]


def _roots(text: str | None, datasets: list[str]) -> dict[str, str]:
    """--data-root PATH (one data set needs a root) or NAME=PATH,NAME=PATH."""
    from benchmark.data import DATASETS

    needing = [d for d in datasets if DATASETS.meta(d).needs_root]
    if not text:
        return {}
    if "=" not in text:
        if len(needing) != 1:
            raise BenchmarkError("--data-root with several data sets that need one: write NAME=PATH,NAME=PATH")
        return {needing[0]: text}
    return dict(parse_kv([text], "--data-root"))


def _recipes(args: argparse.Namespace) -> list[tuple[str, tuple[str, ...], int | None]]:
    """(defense, --defense-opt values, tuning candidate index or None) of every recipe: the --defense list
    (with the sweep's own --defense-opt), the steps of the ablation study named by --ablation, or the
    candidates of --tune."""
    if getattr(args, "tune", None):
        from benchmark.report.tuning import candidates

        if args.ablation or args.defense_opt:
            raise BenchmarkError("--tune runs the search's own recipes: drop --ablation and --defense-opt")
        return [(d, opts, i) for d in _split(args.tune) for i, opts in enumerate(candidates(d, args.budget))]
    if not getattr(args, "ablation", None):
        if not _split(args.defense):
            raise BenchmarkError("sweep: --defense names no defense; give a comma list, e.g. --defense none,ddid")
        return [(d, tuple(args.defense_opt or ()), None) for d in _split(args.defense)]
    from defenses.base import DEFENSES

    steps = DEFENSES.get(args.ablation).ablation
    if not steps:
        raise BenchmarkError(f"defense '{args.ablation}' declares no ablation study; --ablation takes a defense "
                             f"that does: {', '.join(n for n in DEFENSES.names() if DEFENSES.get(n).ablation)}")
    if args.defense_opt:
        raise BenchmarkError("--ablation runs the study's own recipes: drop --defense-opt")
    return [(step.defense, step.options, None) for step in steps]


def expand(args: argparse.Namespace, processes_per_cell: int = 1) -> list[Cell]:
    """Every cell of the grid, each a full run specification built once (bad input fails here, in one line).

    With `processes_per_cell` > 1 (a launcher running each cell under torch.distributed) the cells'
    checkpoints are trained with that many processes, and their specifications say so.
    """
    if processes_per_cell > 1:
        if args.train_processes not in (None, processes_per_cell):
            raise BenchmarkError(f"--train-processes {args.train_processes} disagrees with the launcher's "
                                 f"processes_per_cell={processes_per_cell}; drop one of them")
        args = argparse.Namespace(**{**vars(args), "train_processes": processes_per_cell})
    if getattr(args, "tune", None):
        if args.split not in (None, "validation"):
            raise BenchmarkError("--tune scores validation identities only: drop --split test")
        args = argparse.Namespace(**{**vars(args), "split": "validation"})
    datasets = _split(args.dataset)
    recipes = _recipes(args)
    seeds = seeds_from_args(args)
    roots = _roots(args.data_root, datasets)
    _, external = external_from_args(args)
    cells: list[Cell] = []
    for dataset in datasets:
        for defense, options, candidate in recipes:
            for seed in seeds:
                base = {**vars(args), "dataset": dataset, "data_root": roots.get(dataset), "defense": defense,
                        "defense_opt": list(options)}
                # a training cell attacks nothing: its specification has no attack, option or check of one
                train_args = {**base, "attack": "none", "attack_opt": None, "eps": "8", "check_convergence": False}
                train_spec = spec_from_args(argparse.Namespace(**train_args), seed, external)
                eval_spec = spec_from_args(argparse.Namespace(**base), seed, external)
                label = f"{dataset} / {train_spec.defense.label} / seed {seed}"
                recipe = {"recipe_label": train_spec.defense.label, "recipe_options": tuple(options),
                          "candidate": candidate}
                train = Cell(f"train-{train_spec.digest[:12]}", "train", train_spec.to_json(), label, **recipe)
                cells.append(train)
                cells.append(Cell(f"eval-{eval_spec.digest[:12]}", "eval", eval_spec.to_json(), label, train.id,
                                  **recipe))
    return cells


def state(folder: Path) -> str:
    """done, failed, running (a live worker holds it) or pending."""
    if (folder / "done").is_file():
        return "done"
    if (folder / "running").is_file():
        try:
            info = json.loads((folder / "running").read_text())
            if info.get("host") != socket.gethostname():
                return "running"
            os.kill(int(info["pid"]), 0)
            return "running"
        except (OSError, ValueError, KeyError):
            return "pending"  # its worker died: the cell is redone
    if (folder / "failed").is_file():
        return "failed"
    return "pending"


#: held by the process running a cell, so two sweeps on one folder never run the same cell
CLAIM = "claim.lock"


def run_cell(folder: str, writes_markers: bool = True) -> int:
    """Run one cell in this process (a launcher's worker); writes its markers; returns the exit code.

    In a multi-process cell every process runs this; only the one with `writes_markers` (rank 0) marks it.
    """
    path = Path(folder)
    if (path / "done").is_file():
        return 0
    if not writes_markers:
        return _run_cell(path, writes_markers)
    claim = FileLock(str(path / CLAIM))
    try:
        claim.acquire(timeout=0)
    except Timeout:  # a second sweep on the same folder: the cell is its to finish
        print(f"cell {path.name} is being run by another sweep on this folder; left to it", file=sys.stderr)
        return 0
    try:
        if (path / "done").is_file():  # finished while this worker waited for its turn
            return 0
        return _run_cell(path, writes_markers)
    finally:
        claim.release()


def _run_cell(path: Path, writes_markers: bool) -> int:
    if writes_markers:
        atomic_write_text(path / "running", json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                        "start": time.time()}))
    start = time.perf_counter()
    error = ""
    with open(path / "log.txt", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        handler = configure_logging(log)
        try:
            rc = _execute_cell(json.loads((path / "cell.json").read_text()))
        except BenchmarkError as exc:
            rc, error = 2, f"error: {exc}"
            print(error, file=log)
        except BaseException:  # noqa: BLE001 - a cell's failure is recorded, the sweep goes on
            rc, error = 1, traceback.format_exc()
            print(error, file=log)
        finally:
            logging.getLogger().removeHandler(handler)
    if not writes_markers:
        return rc
    tail = (path / "log.txt").read_text().splitlines()[-12:]
    record = {"rc": rc, "seconds": time.perf_counter() - start, "host": socket.gethostname(), "log_tail": tail}
    if rc == 0:
        (path / "failed").unlink(missing_ok=True)
        atomic_write_text(path / "done", json.dumps(record, indent=1))
    else:
        atomic_write_text(path / "failed", json.dumps({**record, "error": error}, indent=1))
    (path / "running").unlink(missing_ok=True)
    return rc


def _execute_cell(cell: dict[str, Any]) -> int:
    """The cell's run: its specification from JSON, its runtime and writer, through `execute`."""
    from benchmark.core import distributed
    from benchmark.core.provenance import set_command
    from benchmark.report.runs import RunWriter
    from benchmark.run.execute import execute
    from benchmark.run.outcome import Runtime
    from benchmark.run.spec import RunSpec

    set_command(cell.get("command"))
    spec = RunSpec.from_json(cell["spec"])
    runtime = Runtime(**cell["runtime"])
    write = RunWriter(**cell["write"]) if cell.get("write") else None
    ranked = distributed.requested_world_size() > 1
    if ranked:  # a multi-process cell (submitit's processes_per_cell): join the group first, leave it after
        runtime = Runtime(**{**cell["runtime"], "device": str(distributed.init_from_env(runtime.device))})
    try:
        outcome = execute(spec, runtime, write)
        if distributed.world().is_main:
            print_outcome(outcome)
    finally:
        if ranked:
            distributed.shutdown()
    return 0


def prepare(cells: list[Cell], sweep_dir: Path, args: argparse.Namespace) -> None:
    """Write each unfinished cell's folder and `cell.json`: its specification and this sweep's runtime and writer."""
    runtime = runtime_from_args(args, progress=False).to_json()
    writer = writer_from_args(args)
    command = command_argv()  # the sweep's own command: what the cells' rows record as theirs
    for cell in cells:
        folder = cell.folder(sweep_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / "done").is_file():
            continue
        record = {"id": cell.id, "kind": cell.kind, "spec": cell.spec, "runtime": runtime,
                  "write": writer.to_json() if writer is not None and cell.kind == "eval" else None,
                  "label": cell.label, "depends": cell.depends, "recipe_label": cell.recipe_label,
                  "recipe_options": list(cell.recipe_options), "candidate": cell.candidate, "command": command}
        atomic_write_text(folder / "cell.json", json.dumps(record, indent=1))


def format_status(cells: list[Cell], sweep_dir: Path) -> str:
    """One line per cell, then the counts."""
    lines = [f"{'cell':<18} {'kind':<5} {'state':<8} what"]
    counts: dict[str, int] = {}
    for cell in cells:
        s = state(cell.folder(sweep_dir))
        counts[s] = counts.get(s, 0) + 1
        lines.append(f"{cell.id:<18} {cell.kind:<5} {s:<8} {cell.label}")
    lines.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Expand, then print the status (--status) or launch every cell that is not done."""
    from benchmark.cli.launchers import LAUNCHERS

    sweep_dir = _sweep_dir(args)
    launcher_cls = LAUNCHERS.get(args.launcher)
    launcher = launcher_cls(sweep_dir, **parse_kv(args.launcher_opt, "--launcher-opt"))
    launcher.check()
    cells = expand(args, launcher.processes_per_cell)
    if args.status:
        print(format_status(cells, sweep_dir))
        if args.tune:  # the tuning table from whatever has finished, wherever it ran
            _tuning_report(args)
        return 0
    prepare(cells, sweep_dir, args)
    todo = [c for c in cells if state(c.folder(sweep_dir)) != "done"]
    skipped = len(cells) - len(todo)
    print(f"sweep {sweep_dir}: {len(cells)} cells, {skipped} already done, {len(todo)} to run "
          f"(launcher {args.launcher})")
    folders = {kind: [str(c.folder(sweep_dir)) for c in todo if c.kind == kind] for kind in ("train", "eval")}
    launcher.launch(folders["train"], folders["eval"], run_cell)
    print(format_status(cells, sweep_dir))
    if args.tune:
        _tuning_report(args)
    return 0 if all(state(c.folder(sweep_dir)) == "done" for c in cells) else 1


def _sweep_dir(args: argparse.Namespace) -> Path:
    return Path(args.sweep_dir) if args.sweep_dir else home_dir() / "sweeps" / "default"


def _tuning_report(args: argparse.Namespace) -> None:
    """Write and print each data set's tuning table: every candidate and the chosen one per defense."""
    from benchmark.report.tuning import report, write_report

    for dataset in _split(args.dataset):
        frame = report(args.leaderboard_dir or boards_dir(), dataset, _split(args.tune), args.budget,
                       sweep_dir=_sweep_dir(args))
        if frame.empty:
            print(f"tuning on {dataset}: no validation results yet")
            continue
        paths = write_report(frame, args.tune_out or home_dir() / "studies", dataset)
        for _, r in frame[frame["chosen"]].iterrows():
            print(f"tuning on {dataset}: {r['defense']} chooses candidate {r['candidate']} ({r['options']}): "
                  f"validation worst case {r['val_worst_case_mAP']:.2f}, clean {r['val_clean_mAP']:.2f}")
        print("wrote " + ", ".join(str(p) for p in paths))
