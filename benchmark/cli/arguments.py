"""Command-line parsing: the parser of every subcommand and the translation of arguments into a RunSpec.

Every value is checked here (through `spec.make_spec`) before any data is generated or model trained;
argparse's own errors are one line too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import torch
from torch import nn

from benchmark.core.distributed import requested_world_size
from benchmark.core.errors import BenchmarkError
from benchmark.core.options import parse_kv
from benchmark.core.paths import boards_dir, runs_dir
from benchmark.core.precision import AMP_MODES
from benchmark.core.provenance import package_version
from benchmark.run.outcome import Runtime
from benchmark.run.spec import MAX_SEED, SPLITS, ModelSpec, RunSpec, external_model_spec, make_spec

if TYPE_CHECKING:
    from benchmark.report.runs import RunWriter


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line naming the problem and where to look."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def attack_options(pairs: list[str] | None) -> dict[str, dict[str, str]]:
    """--attack-opt NAME:key=value (repeatable; several keys comma-separated)."""
    out: dict[str, dict[str, str]] = {}
    for pair in pairs or []:
        name, sep, kv = pair.partition(":")
        if not sep or not name.strip():
            raise BenchmarkError(f"--attack-opt '{pair}' must be NAME:key=value, e.g. query-bb:queries=500")
        out.setdefault(name.strip(), {}).update(parse_kv([kv], "--attack-opt"))
    return out


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], else one line saying which range."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{text} must be {bound}")
        return value

    return parse


_positive_int = _integer(0)
_seed = _integer(0, MAX_SEED)
_count = _integer(1)


def _add_run_args(p: argparse.ArgumentParser, attacks_default: str) -> None:
    p.add_argument("--defense", default="none", help="defense name (see `list defenses`)")
    p.add_argument("--attack", default=attacks_default,
                   help="'all' (every attack plus the standard suite), 'standard' (the headline suite, standard-v3; "
                        "standard-v1 or standard-v2 name the older ones, see `list suites`), 'none', a comma list "
                        "(fna,sma) or wildcards (art-*)")
    p.add_argument("--check-convergence", action="store_true",
                   help="rerun the suite's APGD attacks with doubled iterations on the queries it left unbroken; "
                        "flags not-converged when worst-case mAP drops by more than 1 point")
    p.add_argument("--dataset", default="synthped", help="test data set (see `list datasets`)")
    p.add_argument("--data-root", default=None, help="folder of the test data set (not for synthped)")
    p.add_argument("--train-dataset", default=None, help="train on another data set (cross-domain)")
    p.add_argument("--train-data-root", default=None, help="folder of the training data set")
    p.add_argument("--backbone", default="reidnet-s", help="backbone (see `list backbones`)")
    p.add_argument("--backbone-weights", default=None,
                   help="local weights file: the backbone's own, or a torchvision state dict (head dropped)")
    p.add_argument("--eps", default="8", help="epsilons in units of 1/255: 8, 8/255, 0.5/255 or a list 2,4,8,16")
    p.add_argument("--seed", type=_seed, default=0, help="seed of training and attacks (not of the data: --data-seed)")
    p.add_argument("--seeds", default=None,
                   help="comma list of training seeds, e.g. 0,1,2: one model trained and evaluated per seed on the "
                        "same data (the seeds-<dataset>.csv board gives their mean, sd and n); overrides --seed")
    p.add_argument("--data-seed", type=_seed, default=0,
                   help="seed that draws the data set (synthped's images, a random identity split); the protocol's "
                        "test set is data seed 0, any other makes the run custom")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--train-processes", type=_positive_int, default=None,
                   help="data-parallel processes the checkpoint is trained with (default: this launch's torchrun "
                        "world size, 1 without torchrun); a value other than 1 makes the run custom")
    p.add_argument("--amp", default=None, choices=AMP_MODES,
                   help="mixed precision for training and feature extraction (attacks stay float32); makes the "
                        "run custom")
    p.add_argument("--split", default=None, choices=SPLITS,
                   help="what is scored: test (the protocol's test identities; default) or validation (a fixed "
                        "quarter of the training identities held out of training, for tuning; makes the run custom)")
    p.add_argument("--epochs", type=_count, default=None,
                   help="training epochs (default: the defense's own; any other value makes the run custom)")
    p.add_argument("--height", type=_positive_int, default=128, help="input height (standard: 128)")
    p.add_argument("--width", type=_positive_int, default=64, help="input width (standard: 64)")
    p.add_argument("--metric", default="euclidean", choices=["euclidean", "cosine"], help="retrieval distance")
    p.add_argument("--dataset-opt", action="append", help="key=value option of the data set, e.g. num_ids=60")
    p.add_argument("--defense-opt", action="append", help="key=value option of the defense (repeatable)")
    p.add_argument("--attack-opt", action="append", help="NAME:key=value option of an attack (repeatable)")
    p.add_argument("--model", default=None, metavar="PKG.MODULE:FUNCTION",
                   help="score a model the benchmark did not train: a function with no arguments returning an "
                        "nn.Module that maps images in [0, 1] to embeddings (no training; the rows are custom, "
                        "named by the model's content hash)")
    p.add_argument("--weights", default=None, help="local state dict (.pt/.pth/.safetensors) loaded into --model")
    p.add_argument("--retrain", action="store_true", help="ignore cached checkpoints (the warm-start parent too)")
    p.add_argument("--no-write", action="store_true", help="write no run folder and no board rows")
    p.add_argument("--allow-dirty", action="store_true",
                   help="write official rows from a tree with uncommitted code changes (recorded in the rows)")
    p.add_argument("--results-dir", default=None,
                   help="where run folders go (default: runs/ in your workspace, $RRB_HOME or "
                        "~/.local/share/reid-robustness-bench; `publish` copies them to results/)")
    p.add_argument("--leaderboard-dir", default=None,
                   help="where board rows go (default: leaderboards/ in your workspace; `publish` puts them on "
                        "the official boards)")
    p.add_argument("--threads", type=_count, default=None,
                   help="torch CPU threads (default: torch's choice; recorded in every row)")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m benchmark` parser with all subcommands."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = OneLineParser(prog="python -m benchmark", formatter_class=fmt,
                           description="Adversarial robustness benchmark for person re-identification.")
    parser.add_argument("--version", action="version",
                        version=f"reid-robustness-bench {package_version()} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    p_list = sub.add_parser("list", help="list data sets, backbones, attacks and defenses", formatter_class=fmt)
    p_list.add_argument("what", nargs="?", default="all",
                        choices=["all", "datasets", "backbones", "attacks", "defenses", "suites"])
    p_list.add_argument("--filter", default="*", help="wildcard on names, e.g. 'art-*'")
    p_list.add_argument("--details", default=None, metavar="NAME",
                        help="show the metadata and every option (type, default) of one entry")
    _add_run_args(sub.add_parser("run", help="train/load a defense, score it against attacks, write the boards",
                                 formatter_class=fmt), "all")
    _add_run_args(sub.add_parser("train", help="train (or load from cache) a defense and report its checkpoint",
                                 formatter_class=fmt), "none")
    _add_run_args(sub.add_parser("eval", help="clean and attacked scores of a trained defense (writes nothing)",
                                 formatter_class=fmt), "none")
    p_sweep = sub.add_parser("sweep", help="a grid of defenses x seeds x data sets as resumable cells",
                             formatter_class=fmt)
    _add_run_args(p_sweep, "all")
    add_sweep_args(p_sweep)
    p_table = sub.add_parser("table", help="print the summary board as a table for papers", formatter_class=fmt)
    p_table.add_argument("--dataset", default="synthped")
    p_table.add_argument("--format", default="md", choices=["md", "latex", "csv"])
    p_table.add_argument("--variants", action="store_true", help="the labelled recipes (e.g. DDID ablations)")
    p_table.add_argument("--suites", action="store_true",
                         help="every published suite's worst case side by side, per model (standard-v1 vs -v2)")
    p_table.add_argument("--curves", action="store_true",
                         help="robustness curves: each model's suite worst case at every ε it was run at")
    p_table.add_argument("--leaderboard-dir", default="leaderboards")
    p_table.add_argument("--readme", default=None, metavar="PATH",
                         help="rewrite the tables between <!-- table:... --> markers in this file instead")
    p_merge = sub.add_parser("merge", help="upsert the runs on another folder's boards into the leaderboards",
                             formatter_class=fmt)
    p_merge.add_argument("source", help="the --leaderboard-dir the runs wrote to (e.g. a sweep's on a cluster)")
    p_merge.add_argument("--leaderboard-dir", default=None,
                         help="the boards to merge into (default: your workspace's; never the official ones, "
                              "which only `publish` writes)")
    p_merge.add_argument("--dataset", default=None, help="only these data sets (comma list); default all found")
    p_pub = sub.add_parser("publish", help="put runs of your workspace on the official boards and results/ "
                           "(the only writer of both), after the admission rules", formatter_class=fmt)
    p_pub.add_argument("runs", nargs="*", metavar="RUN", help="run folder names in your workspace's runs/")
    p_pub.add_argument("--backfill", action="store_true",
                       help="fill what published rows made before a column existed lack, from their committed "
                            "records: 95 %% intervals (per_query.csv) and data_seed (config.json); no measured "
                            "number changes")
    p_pub.add_argument("--yes", action="store_true", help="replace published rows (the diff is printed first)")
    p_pub.add_argument("--results-dir", default=None, help="the runs' folder (default: your workspace's runs/)")
    p_pub.add_argument("--leaderboard-dir", default=None,
                       help="the boards the runs wrote (default: your workspace's leaderboards/)")
    p_cmp = sub.add_parser("compare", help="two runs on the same test set, query by query: paired differences "
                           "with 95 %% intervals", formatter_class=fmt)
    p_cmp.add_argument("runs", nargs=2, metavar="RUN", help="run folders, or run ids in --results-dir or results/; "
                       "a comma list of runs, one per training seed, compares over seeds (paired by seed); or a "
                       "published defense (`ddid`): its runs of --suite on the official board, one per seed")
    p_cmp.add_argument("--results-dir", default=None, help="where run ids are looked up first (default: your "
                       "workspace's runs/, then the published results/)")
    p_cmp.add_argument("--dataset", default="synthped", help="the official board a defense name is looked up on")
    p_cmp.add_argument("--suite", default=None, help="the suite whose runs a defense name stands for (default: the "
                       "one the board's tables show for these defenses: the headline suite once it covers them)")
    p_cmp.add_argument("--seeds", default=None, help="training seeds a defense name stands for, e.g. 0,1,2 "
                       "(default: every published seed)")
    p_cmp.add_argument("--leaderboard-dir", default=None, help="the official boards (default: the checkout's "
                       "leaderboards/)")
    p_plots = sub.add_parser("plots", help="draw every figure from the leaderboards and the latest runs",
                             formatter_class=fmt)
    p_plots.add_argument("--leaderboard-dir", default="leaderboards")
    p_plots.add_argument("--results-dir", default="results")
    p_plots.add_argument("--out", default="leaderboards/figures")
    p_site = sub.add_parser("site", help="render the static HTML leaderboard from the CSV boards",
                            formatter_class=fmt)
    p_site.add_argument("--leaderboard-dir", default="leaderboards")
    p_site.add_argument("--results-dir", default="results")
    p_site.add_argument("--out", default="leaderboards/site",
                        help="output folder: new, empty, or a site this command built (replaced whole)")
    p_val = sub.add_parser("validate", help="check a defense against the admission rules on a small synthped",
                           formatter_class=fmt)
    p_val.add_argument("--defense", required=True, help="defense name (see `list defenses`)")
    p_val.add_argument("--defense-opt", action="append", help="key=value option of the defense (repeatable)")
    p_val.add_argument("--epochs", type=_count, default=1, help="training epochs before the checks")
    p_val.add_argument("--backbone", default="reidnet-s")
    p_val.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p_val.add_argument("--report", default=None, metavar="PATH",
                       help="report file, markdown or .json (default: validate-DEFENSE.md in your workspace)")
    p_val.add_argument("--threads", type=_count, default=None)
    p_val.add_argument("--rule", action="append", default=None, metavar="NAME",
                       help="check only this rule (repeatable; `trains` always runs first); default: every rule")
    p_tp = sub.add_parser("throughput", help="images/s of extraction, attacks and training steps", formatter_class=fmt)
    p_tp.add_argument("--device", default="auto")
    p_tp.add_argument("--backbone", default="reidnet-s")
    p_tp.add_argument("--batch-size", type=_count, default=32)
    p_tp.add_argument("--attack", default="all")
    p_tp.add_argument("--defense", default="all")
    p_tp.add_argument("--repeats", type=_count, default=3)
    p_tp.add_argument("--leaderboard-dir", default=None, help="where the throughput board goes (default: your "
                      "workspace's leaderboards/)")
    p_tp.add_argument("--threads", type=_count, default=None)
    p_tp.add_argument("--height", type=_positive_int, default=128, help="input height (paper scale: 256)")
    p_tp.add_argument("--width", type=_positive_int, default=64, help="input width (paper scale: 128)")
    p_tp.add_argument("--amp", default="off", choices=AMP_MODES,
                      help="time extraction and training steps under bf16 autocast (attacks stay float32)")
    return parser


def seeds_from_args(args: argparse.Namespace) -> list[int]:
    """The run's seeds: --seeds as a list, else [--seed]; one clear line for a bad list."""
    if not getattr(args, "seeds", None):
        return [args.seed]
    parts = [p.strip() for p in str(args.seeds).split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise BenchmarkError(f"--seeds {args.seeds!r}: give non-negative integers, e.g. --seeds 0,1,2")
    return sorted({int(p) for p in parts})


def spec_from_args(args: argparse.Namespace, seed: int | None = None, external: ModelSpec | None = None) -> RunSpec:
    """Validate every run argument and build the canonical RunSpec (one-line BenchmarkError on bad input).

    `seed` overrides --seed (one spec per seed of --seeds); `external` is --model's ModelSpec.
    """
    return make_spec(
        defense=args.defense, attacks=args.attack, dataset=args.dataset, data_root=args.data_root,
        train_dataset=args.train_dataset, train_data_root=args.train_data_root, backbone=args.backbone,
        backbone_weights=args.backbone_weights, eps=args.eps, seed=args.seed if seed is None else seed,
        epochs=args.epochs, height=args.height, width=args.width, metric=args.metric,
        dataset_options=parse_kv(args.dataset_opt, "--dataset-opt"),
        defense_options=parse_kv(args.defense_opt, "--defense-opt"),
        attack_options=attack_options(args.attack_opt), check_convergence=args.check_convergence,
        train_processes=args.train_processes if args.train_processes is not None else requested_world_size(),
        amp=args.amp or "off", split=getattr(args, "split", None) or "test", external=external,
        data_seed=getattr(args, "data_seed", 0))


def external_from_args(args: argparse.Namespace) -> tuple[nn.Module | None, ModelSpec | None]:
    """--model's module (loaded once) and its ModelSpec, or (None, None) without --model."""
    if getattr(args, "model", None) is None:
        if getattr(args, "weights", None) is not None:
            raise BenchmarkError("--weights loads a state dict into --model: add --model PKG.MODULE:FUNCTION, or use "
                                 "--backbone-weights for a registered backbone")
        return None, None
    from benchmark.models.external import load_factory

    module = load_factory(args.model, args.weights)
    return module, external_model_spec(module, f"factory:{args.model}", args.model, args.weights)


def runtime_from_args(args: argparse.Namespace, progress: bool = True) -> Runtime:
    """How the run executes (device, cache use, threads); nothing here changes its numbers."""
    return Runtime(device=args.device, retrain=getattr(args, "retrain", False), progress=progress,
                   threads=getattr(args, "threads", None))


def writer_from_args(args: argparse.Namespace) -> RunWriter | None:
    """Where `run` writes its records (None with --no-write)."""
    if args.no_write:
        return None
    from benchmark.report.runs import RunWriter  # pandas and the report layer load only for a run that writes

    return RunWriter(args.results_dir or runs_dir(), args.leaderboard_dir or boards_dir(), args.allow_dirty)


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    """Options of `sweep` beyond those of `run` (whose --defense, --dataset may be comma lists)."""
    p.add_argument("--launcher", default="local", help="local or submitit (see benchmark/cli/launchers.py)")
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
    p.add_argument("--budget", type=_count, default=4, help="candidates per defense for --tune (defaults included)")
    p.add_argument("--tune-out", default=None,
                   help="folder of the tuning tables and figures (default: studies/ in your workspace)")
    p.add_argument("--sweep-dir", default=None, help="folder of the sweep's cells (default: sweeps/default in "
                   "your workspace)")
    p.add_argument("--status", action="store_true", help="print done / running / failed / pending per cell")
