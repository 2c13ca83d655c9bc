"""What each CLI subcommand does."""

from __future__ import annotations

import argparse
import json

from attacks import ATTACKS
from benchmark.cli import _attack_options, _eps_list
from benchmark.data import DATASETS
from benchmark.errors import BenchmarkError
from benchmark.harness import RunConfig, format_summary, format_table, run_benchmark
from benchmark.models import BACKBONES
from benchmark.options import parse_kv
from defenses import DEFENSES


def run_config(args: argparse.Namespace) -> RunConfig:
    defense_options = parse_kv(args.defense_opt)
    if args.ablate:
        defense_options["ablate"] = args.ablate.replace(",", "+")
    if args.ddid_generator:
        defense_options["generator"] = args.ddid_generator
    if (args.ablate or args.ddid_generator) and args.defense != "ddid":
        raise BenchmarkError("--ablate and --ddid-generator apply to --defense ddid only")
    return RunConfig(
        defense=args.defense, attacks=args.attack, dataset=args.dataset, data_root=args.data_root,
        train_dataset=args.train_dataset, train_data_root=args.train_data_root, backbone=args.backbone,
        backbone_weights=args.backbone_weights, eps=_eps_list(args.eps), seed=args.seed, device=args.device,
        epochs=args.epochs, height=args.height, width=args.width, metric=args.metric,
        dataset_options=parse_kv(args.dataset_opt), defense_options=defense_options,
        attack_options=_attack_options(args.attack_opt), retrain=args.retrain)


def cmd_list(args: argparse.Namespace) -> int:
    sections = {"datasets": DATASETS, "backbones": BACKBONES, "attacks": ATTACKS, "defenses": DEFENSES}
    for title, registry in sections.items():
        if args.what not in ("all", title):
            continue
        print(f"{title}:")
        for name in registry.names(args.filter):
            meta = registry.meta(name)
            if title == "attacks":
                desc = (f"{meta['family']:<9} {meta['knowledge']:<11} eps={meta['eps'] * 255:.0f}/255 "
                        f"steps={meta['steps']}  {meta.get('summary', '')}")
            elif title == "defenses":
                seen = ",".join(meta.get("trains_with", ())) or "-"
                desc = f"trains with: {seen:<14} {meta.get('summary', '')}"
            else:
                desc = ", ".join(f"{k}={v}" for k, v in meta.items() if k != "default")
            print(f"  {name:<14} {desc}")
        for plugin, err in registry.plugin_errors.items():
            print(f"  (plugin '{plugin}' failed to load: {err})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cfg = run_config(args)
    outcome = run_benchmark(cfg)
    info = outcome.train_info
    print(outcome.workspace.dataset.summary())
    print(f"defense {cfg.defense} / backbone {cfg.backbone} / seed {cfg.seed}: "
          f"{'loaded from cache' if info.get('cached') else 'trained'} "
          f"({info.get('train_seconds', 0):.0f} s training), checkpoint {info['checkpoint']}")
    print(format_table(outcome))
    summary = format_summary(outcome)
    if summary:
        print(summary)
    if not args.no_write and args.command == "run":
        from benchmark.reporting import write_run

        paths = write_run(outcome, args.results_dir, args.leaderboard_dir)
        for label, path in paths.items():
            print(f"{label}: {path}")
    else:
        from benchmark.sanity import format_flags, sanity_flags

        print(format_flags(sanity_flags(outcome)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = run_config(args)
    cfg.attacks = "none"
    outcome = run_benchmark(cfg)
    print(json.dumps({"checkpoint": outcome.train_info["checkpoint"], "cached": outcome.train_info.get("cached"),
                      "train_seconds": outcome.train_info.get("train_seconds"),
                      "clean": outcome.clean.as_dict()}, indent=2))
    return 0


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "list":
        return cmd_list(args)
    if args.command in ("run", "eval"):
        return cmd_run(args)
    if args.command == "train":
        return cmd_train(args)
    if args.command == "plots":
        from benchmark.plots import plot_all

        for path in plot_all(args.leaderboard_dir, args.results_dir, args.out):
            print(path)
        return 0
    if args.command == "throughput":
        from benchmark.throughput import cmd_throughput

        return cmd_throughput(args)
    raise BenchmarkError(f"unknown command {args.command}")
