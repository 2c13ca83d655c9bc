"""What each CLI subcommand does: one function per command, looked up by name."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from attacks import ATTACKS
from attacks.suites import SUITES
from benchmark.cli.arguments import (
    external_from_args,
    runtime_from_args,
    seeds_from_args,
    spec_from_args,
    writer_from_args,
)
from benchmark.cli.printing import print_outcome
from benchmark.core.distributed import world
from benchmark.core.errors import BenchmarkError
from benchmark.core.options import format_value, option_table
from benchmark.core.paths import OFFICIAL_BOARDS, boards_dir, home_dir
from benchmark.core.provenance import REPO
from benchmark.core.registry import Registry
from benchmark.data import DATASETS
from benchmark.models import BACKBONES
from benchmark.run.execute import execute
from benchmark.run.spec import RunSpec
from defenses import DEFENSES

REGISTRIES: dict[str, Registry] = {"datasets": DATASETS, "backbones": BACKBONES, "attacks": ATTACKS,
                                   "defenses": DEFENSES, "suites": SUITES}


def _summary_line(title: str, name: str, meta: Any) -> str:
    if title == "attacks":
        eps = f"{meta.eps * 255:.0f}/255" if meta.eps is not None else "-"
        return f"{meta.family:<9} {meta.knowledge:<11} eps={eps} steps={meta.steps}  {meta.summary}"
    if title == "suites":
        return f"alias '{meta.alias or '-'}'  {meta.summary}"
    if title == "defenses":
        seen = ",".join(meta.trains_with) or "-"
        return f"trains with: {seen:<14} {meta.summary}"
    return ", ".join(f"{k}={v}" for k, v in meta.as_dict().items()
                     if v not in ("", None, False) and k not in ("default", "options", "torchvision_keys", "dist"))


def _details(name: str) -> int:
    hits = [(title, reg) for title, reg in REGISTRIES.items() if name in reg]
    if not hits:
        raise BenchmarkError(f"'{name}' is not a registered data set, backbone, attack or defense; see "
                             "`python -m benchmark list`")
    for title, registry in hits:
        entry = registry.entry(name)
        print(f"{title[:-1]} '{name}'")
        for key, value in sorted(entry.meta.as_dict().items()):
            if key not in ("options", "torchvision_keys"):
                print(f"  {key}: {value}")
        options_cls = getattr(entry.obj, "Options", None) or getattr(entry.meta, "options", None)
        rows = option_table(options_cls) if options_cls else []
        print("  options (key  type  default  accepts):" if rows else "  options: none")
        for key, kind, default, accepts in rows:
            print(f"    {key:<16} {kind:<6} {format_value(key, default):<12} {accepts}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print the registries (or one entry's details with --details NAME)."""
    if args.details:
        return _details(args.details)
    for title, registry in REGISTRIES.items():
        if args.what not in ("all", title):
            continue
        print(f"{title}:")
        for name in registry.names(args.filter):
            print(f"  {name:<14} {_summary_line(title, name, registry.meta(name))}")
        for prefix, summary in registry.families().items():
            print(f"  {prefix + ':NAME':<14} {summary}")
        for plugin, err in registry.plugin_errors.items():
            print(f"  (plugin '{plugin}' failed to load: {err})")
    return 0


RunCommand = Callable[[argparse.Namespace, RunSpec, nn.Module | None], int]


def _per_seed(command: RunCommand) -> Callable[[argparse.Namespace], int]:
    """Run `command` once per seed of --seeds, each with its specification (all built before the first runs)."""
    def run(args: argparse.Namespace) -> int:
        module, external = external_from_args(args)
        specs = [spec_from_args(args, seed=s, external=external) for s in seeds_from_args(args)]
        codes = []
        for i, spec in enumerate(specs):
            if len(specs) > 1:
                print(f"== seed {spec.seed} ({i + 1} of {len(specs)})", flush=True)
            codes.append(command(args, spec, module))
        return max(codes)

    run.__doc__ = command.__doc__
    return run


def cmd_run(args: argparse.Namespace, spec: RunSpec, module: nn.Module | None = None) -> int:
    """Train or load (or take --model), attack, print, and (for `run` without --no-write) write the records."""
    main_rank = world().is_main  # under torchrun every rank attacks its shard; rank 0 alone prints and writes
    write = writer_from_args(args) if args.command == "run" else None
    outcome = execute(spec, runtime_from_args(args, progress=main_rank), write, model=module)
    if main_rank:
        print_outcome(outcome)
    return 0


def cmd_train(args: argparse.Namespace, spec: RunSpec, module: nn.Module | None = None) -> int:
    """Train (or load) the defense's checkpoint and print where it is."""
    outcome = execute(spec, runtime_from_args(args, progress=world().is_main), model=module)
    if not world().is_main:
        return 0
    print(json.dumps({"checkpoint": outcome.train_info.checkpoint, "cached": outcome.train_info.cached,
                      "train_seconds": outcome.train_info.train_seconds,
                      "clean": outcome.clean.as_dict()}, indent=2))
    return 0


def cmd_plots(args: argparse.Namespace) -> int:
    """Redraw every figure from the boards and run folders."""
    from benchmark.report.plots import plot_all

    for path in plot_all(args.leaderboard_dir, args.results_dir, args.out):
        print(path)
    return 0


def cmd_throughput(args: argparse.Namespace) -> int:
    """Measure images/s of extraction, attacks and training steps."""
    from benchmark.cli.throughput import cmd_throughput as measure

    return measure(args)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Expand a grid into cells and launch them (or print their status)."""
    from benchmark.cli.sweep import cmd_sweep as sweep

    return sweep(args)


def cmd_table(args: argparse.Namespace) -> int:
    """Print the summary board (md, latex, csv) or regenerate the README's tables."""
    from benchmark.report.tables import cmd_table as table

    return table(args)


def cmd_merge(args: argparse.Namespace) -> int:
    """Upsert the runs on another folder's boards into --leaderboard-dir, by the boards' own rules."""
    from benchmark.report.merge import merge_boards

    target = Path(args.leaderboard_dir) if args.leaderboard_dir else boards_dir()
    if target.resolve() == (REPO / OFFICIAL_BOARDS).resolve():
        raise BenchmarkError(f"merge: {target} holds the official boards, which only `python -m benchmark publish "
                             "RUN...` writes (with its admission rules); merge into your workspace instead")
    merged = merge_boards(args.source, target, args.dataset.split(",") if args.dataset else None)
    for board, runs in merged.items():
        print(f"merged {runs} runs into {board} ({target})")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """Admit runs of the workspace onto the official boards and into results/ (the only writer of both); with
    --backfill, fill the cells published rows made before a column existed lack, from their records."""
    from benchmark.core.paths import OFFICIAL_RESULTS, runs_dir
    from benchmark.report.backfill import backfill
    from benchmark.report.publish import publish

    if args.runs or not args.backfill:
        written = publish(args.runs, Path(args.results_dir) if args.results_dir else runs_dir(),
                          Path(args.leaderboard_dir) if args.leaderboard_dir else boards_dir(),
                          REPO / OFFICIAL_RESULTS, REPO / OFFICIAL_BOARDS, yes=args.yes)
        for path in dict.fromkeys(written):
            print(f"published: {path}")
    if args.backfill:
        for report in backfill(REPO / OFFICIAL_BOARDS, REPO / OFFICIAL_RESULTS):
            print(f"{report.board.name}: {report.filled} cells filled, {report.present} already there, "
                  f"{len(report.unmatched)} without a matching record"
                  + ("; its seeds board rebuilt" if report.seeds_rebuilt else ""))
            for line in report.unmatched:
                print(f"  {line}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the paired, query-by-query comparison of two runs (or two sets of runs, one per training seed)."""
    from attacks.suites import SUITES
    from benchmark.core.paths import OFFICIAL_BOARDS, OFFICIAL_RESULTS, runs_dir
    from benchmark.core.protocol import HEADLINE_SUITE
    from benchmark.report.compare import compare_text, resolve_side, suite_on_view

    if args.suite and args.suite not in SUITES:
        raise BenchmarkError(f"--suite {args.suite}: not a suite; use one of {', '.join(SUITES.names())}")
    seeds = seeds_from_args(args) if args.seeds else None
    folders = [Path(args.results_dir) if args.results_dir else runs_dir(), REPO / OFFICIAL_RESULTS]
    boards = Path(args.leaderboard_dir) if args.leaderboard_dir else REPO / OFFICIAL_BOARDS
    suite = args.suite or suite_on_view(list(args.runs), boards, args.dataset, HEADLINE_SUITE)
    a, b = (resolve_side(side, folders, boards, args.dataset, suite, seeds) for side in args.runs)
    print(compare_text(a, b), end="")
    return 0


def cmd_site(args: argparse.Namespace) -> int:
    """Render the static site from the boards and run folders."""
    from benchmark.report.site import build_site

    pages = build_site(args.leaderboard_dir, args.results_dir, args.out)
    print(f"{len(pages)} pages in {args.out}/ (open {Path(args.out) / 'index.html'})")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a defense against the admission rules; print pass/fail per rule and write the report file."""
    from benchmark.core.atomic import atomic_write_text
    from benchmark.core.device import deterministic_kernels, resolve_device
    from benchmark.core.options import parse_kv
    from benchmark.run.admission import RULES, validate_defense
    from defenses import build_defense

    defense = build_defense(args.defense, **parse_kv(args.defense_opt, "--defense-opt"))
    names = [r.name for r in RULES]
    unknown = sorted(set(args.rule or ()) - set(names))
    if unknown:
        raise BenchmarkError(f"--rule {', '.join(unknown)}: not a rule; use one of {', '.join(names)}")
    rules = None if not args.rule else tuple({"trains", *args.rule})
    report_path = Path(args.report) if args.report else home_dir() / f"validate-{args.defense}.md"
    if not args.report:
        report_path.parent.mkdir(parents=True, exist_ok=True)
    if not report_path.parent.is_dir():
        raise BenchmarkError(f"--report {report_path}: folder '{report_path.parent}' does not exist; create it or "
                             "pass another path")
    device = str(resolve_device(args.device))
    deterministic_kernels()
    print(f"validating '{args.defense}' on a small synthped ({args.epochs} epoch(s), {device}); "
          f"{len(rules) if rules else len(RULES)} rules")
    report = validate_defense(args.defense, defense, epochs=args.epochs, device=device, backbone=args.backbone,
                              progress=lambda rule: print(f"  checking {rule} ...", flush=True), rules=rules)
    for result in report.results:
        print(f"{'PASS' if result.passed else 'FAIL'}  {result.rule:<19} {result.detail}")
    text = (json.dumps(report.as_dict(), indent=2) + "\n" if report_path.suffix == ".json"
            else report.markdown())
    atomic_write_text(report_path, text)
    verdict = (("passed every rule" if rules is None else f"passed the {len(report.results)} rules checked")
               if report.passed else "FAILED " + ", ".join(report.failed()))
    print(f"'{args.defense}' {verdict} ({report.seconds:.0f} s); report: {report_path}")
    return 0 if report.passed else 1


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "list": cmd_list, "run": _per_seed(cmd_run), "eval": _per_seed(cmd_run), "train": _per_seed(cmd_train),
    "plots": cmd_plots,
    "throughput": cmd_throughput, "sweep": cmd_sweep, "table": cmd_table, "merge": cmd_merge,
    "validate": cmd_validate, "site": cmd_site, "publish": cmd_publish, "compare": cmd_compare}


#: commands that run one cell and may be launched by torchrun (one process per device)
DISTRIBUTED_COMMANDS = ("run", "eval", "train")


def dispatch(args: argparse.Namespace) -> int:
    """Run the subcommand named in `args`; under torchrun, join the process group first and leave it after."""
    from benchmark.core import distributed

    if distributed.requested_world_size() > 1:
        if args.command not in DISTRIBUTED_COMMANDS:
            raise BenchmarkError(f"'{args.command}' runs in one process; only {', '.join(DISTRIBUTED_COMMANDS)} "
                                 "can be launched with torchrun")
        args.device = distributed.init_from_env(args.device)
        try:
            return COMMANDS[args.command](args)
        finally:
            distributed.shutdown()
    return COMMANDS[args.command](args)
