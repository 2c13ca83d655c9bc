"""Grid sweeps: defenses x seeds x data sets expanded into hashed, resumable cells (DomainBed style).

Each (data set, defense recipe, seed) gives one training cell (`train`) and one evaluation cell
(`run` with the sweep's attacks and ε list) that depends on it. A cell's folder is named by the hash
of its run specification and holds `cell.json` (the command), `log.txt`, and a `done` marker with
its outputs, or `failed` with the error; `running` while a worker holds it. A rerun skips done
cells and redoes failed, unfinished or interrupted ones. Launchers come from `benchmark.launchers`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from benchmark.atomic import atomic_write_text
from benchmark.errors import BenchmarkError
from benchmark.options import parse_kv

#: run options passed through to every cell as given on the sweep's command line
PASS_THROUGH = ("--backbone", "--backbone-weights", "--epochs", "--height", "--width", "--metric", "--device",
                "--results-dir", "--leaderboard-dir", "--threads", "--ablate", "--ddid-generator", "--amp",
                "--train-processes", "--split")
REPEATED = ("--dataset-opt", "--defense-opt")
FLAGS = ("--retrain", "--no-write", "--allow-dirty")


@dataclass(frozen=True)
class Cell:
    """One unit of work: a training or an evaluation command, named by its run specification's hash."""

    id: str
    kind: str                # train or eval
    argv: tuple[str, ...]
    label: str
    depends: str | None = None
    #: the defense recipe's canonical label when the sweep was expanded (labels drop options equal to
    #: today's defaults, so a later change of defaults must not rename what this cell ran)
    recipe_label: str = ""
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

    needing = [d for d in datasets if DATASETS.meta(d).get("needs_root", True)]
    if not text:
        return {}
    if "=" not in text:
        if len(needing) != 1:
            raise BenchmarkError("--data-root with several data sets that need one: write NAME=PATH,NAME=PATH")
        return {needing[0]: text}
    return dict(parse_kv([text], "--data-root"))


def _common(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    for flag in PASS_THROUGH:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            out += [flag, str(value)]
    for flag in REPEATED:
        for value in getattr(args, flag[2:].replace("-", "_")) or []:
            out += [flag, value]
    out += [flag for flag in FLAGS if getattr(args, flag[2:].replace("-", "_"))]
    return out


def _recipes(args: argparse.Namespace) -> list[tuple[str, tuple[str, ...], int | None]]:
    """(defense, extra --defense-opt values, tuning candidate index or None) of every recipe: the
    --defense list, the steps of the ablation study named by --ablation, or the candidates of --tune."""
    if getattr(args, "tune", None):
        from benchmark.tuning import candidates

        if args.ablation or args.ablate is not None or args.defense_opt:
            raise BenchmarkError("--tune runs the search's own recipes: drop --ablation, --ablate and --defense-opt")
        return [(d, opts, i) for d in _split(args.tune) for i, opts in enumerate(candidates(d, args.budget))]
    if not getattr(args, "ablation", None):
        return [(d, (), None) for d in _split(args.defense)]
    from defenses.base import DEFENSES

    steps = DEFENSES.get(args.ablation).ablation
    if not steps:
        raise BenchmarkError(f"defense '{args.ablation}' declares no ablation study; --ablation takes a defense "
                             f"that does: {', '.join(n for n in DEFENSES.names() if DEFENSES.get(n).ablation)}")
    if args.ablate is not None or args.defense_opt:
        raise BenchmarkError("--ablation runs the study's own recipes: drop --ablate and --defense-opt")
    return [(step.defense, step.options, None) for step in steps]


def expand(args: argparse.Namespace, processes_per_cell: int = 1) -> list[Cell]:
    """Every cell of the grid, each validated as a full run specification (bad input fails here, in one line).

    With `processes_per_cell` > 1 (a launcher running each cell under torch.distributed) the cells'
    checkpoints are trained with that many processes, and their specifications say so.
    """
    from benchmark.arguments import build_parser, seeds_from_args, spec_from_args

    if processes_per_cell > 1:
        if args.train_processes not in (None, processes_per_cell):
            raise BenchmarkError(f"--train-processes {args.train_processes} disagrees with the launcher's "
                                 f"processes_per_cell={processes_per_cell}; drop one of them")
        args = argparse.Namespace(**{**vars(args), "train_processes": processes_per_cell})

    if getattr(args, "tune", None):
        if args.split not in (None, "validation"):
            raise BenchmarkError("--tune scores validation identities only: drop --split test")
        args = argparse.Namespace(**{**vars(args), "split": "validation"})
    parser = build_parser()
    datasets = _split(args.dataset)
    recipes = _recipes(args)
    seeds = [str(s) for s in seeds_from_args(args)]
    roots = _roots(args.data_root, datasets)
    common = _common(args)
    attack_opts = [x for opt in args.attack_opt or [] for x in ("--attack-opt", opt)]
    cells: list[Cell] = []
    for dataset in datasets:
        data = ["--dataset", dataset] + (["--data-root", roots[dataset]] if dataset in roots else [])
        for defense, options, candidate in recipes:
            for seed in seeds:
                base = [*data, "--defense", defense, "--seed", seed, *common,
                        *(x for opt in options for x in ("--defense-opt", opt))]
                train_argv = ["train", *base]
                eval_argv = ["run", *base, "--attack", args.attack, "--eps", args.eps, *attack_opts]
                train_spec = spec_from_args(parser.parse_args(train_argv))
                eval_spec = spec_from_args(parser.parse_args(eval_argv))
                label = f"{dataset} / {train_spec.defense.label} / seed {seed}"
                recipe = {"recipe_label": train_spec.defense.label, "candidate": candidate}
                train = Cell(f"train-{train_spec.digest[:12]}", "train", tuple(train_argv), label, **recipe)
                cells.append(train)
                cells.append(Cell(f"eval-{eval_spec.digest[:12]}", "eval", tuple(eval_argv), label, train.id,
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


def run_cell(folder: str, writes_markers: bool = True) -> int:
    """Run one cell in this process (a launcher's worker); writes its markers; returns the exit code.

    In a multi-process cell every process runs this; only the one with `writes_markers` (rank 0) marks it.
    """
    from benchmark.cli import main

    path = Path(folder)
    cell = json.loads((path / "cell.json").read_text())
    if (path / "done").is_file():
        return 0
    if writes_markers:
        atomic_write_text(path / "running", json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                        "start": time.time()}))
    start = time.perf_counter()
    error = ""
    with open(path / "log.txt", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            rc = main(cell["argv"])
        except BaseException:  # noqa: BLE001 - a cell's failure is recorded, the sweep goes on
            rc, error = 1, traceback.format_exc()
            print(error, file=log)
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


def prepare(cells: list[Cell], sweep_dir: Path) -> None:
    """Create each cell's folder with its command (idempotent)."""
    for cell in cells:
        folder = cell.folder(sweep_dir)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"id": cell.id, "kind": cell.kind, "argv": list(cell.argv), "label": cell.label,
                  "depends": cell.depends, "recipe_label": cell.recipe_label, "candidate": cell.candidate}
        if not (folder / "cell.json").is_file():
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
    from benchmark.launchers import LAUNCHERS

    sweep_dir = Path(args.sweep_dir)
    launcher_cls = LAUNCHERS.get(args.launcher)
    launcher = launcher_cls(sweep_dir, **parse_kv(args.launcher_opt, "--launcher-opt"))
    cells = expand(args, launcher.processes_per_cell)
    if args.status:
        print(format_status(cells, sweep_dir))
        if args.tune:  # the tuning table from whatever has finished, wherever it ran
            _tuning_report(args)
        return 0
    prepare(cells, sweep_dir)
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


def _tuning_report(args: argparse.Namespace) -> None:
    """Write and print each data set's tuning table: every candidate and the chosen one per defense."""
    from benchmark.tuning import report, write_report

    for dataset in _split(args.dataset):
        frame = report(args.leaderboard_dir or "leaderboards", dataset, _split(args.tune), args.budget,
                       sweep_dir=args.sweep_dir)
        if frame.empty:
            print(f"tuning on {dataset}: no validation results yet")
            continue
        paths = write_report(frame, args.tune_out, dataset)
        for _, r in frame[frame["chosen"]].iterrows():
            print(f"tuning on {dataset}: {r['defense']} chooses candidate {r['candidate']} ({r['options']}): "
                  f"validation worst case {r['val_worst_case_mAP']:.2f}, clean {r['val_clean_mAP']:.2f}")
        print("wrote " + ", ".join(str(p) for p in paths))


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    """Options of `sweep` beyond those of `run` (whose --defense, --dataset may be comma lists)."""
    p.add_argument("--launcher", default="local", help="local or submitit (see benchmark/launchers.py)")
    p.add_argument("--launcher-opt", action="append",
                   help="key=value for the launcher: workers=N (local); cluster, partition, gpus_per_task, "
                        "cpus_per_task, time_limit (minutes), array_parallelism, folder (submitit)")
    p.add_argument("--ablation", default=None, metavar="DEFENSE",
                   help="run DEFENSE's ablation study (DDID: the paper's Table 3) instead of --defense; "
                        "`table` reports it")
    p.add_argument("--tune", default=None, metavar="DEFENSE[,DEFENSE]",
                   help="fair tuning: each defense's defaults plus --budget - 1 random draws from its search space, "
                        "trained and scored on validation identities held out of the training split "
                        "(--split validation); writes tuning-<dataset>.csv/.png to --tune-out")
    p.add_argument("--budget", type=int, default=4, help="candidates per defense for --tune (defaults included)")
    p.add_argument("--tune-out", default="leaderboards/studies", help="folder of the tuning tables and figures")
    p.add_argument("--sweep-dir", default="sweeps/default", help="folder of the sweep's cells")
    p.add_argument("--status", action="store_true", help="print done / running / failed / pending per cell")
