"""Command line: `python -m benchmark {list,train,eval,run,plots,throughput}`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch

from benchmark.errors import BenchmarkError
from benchmark.options import parse_kv
from benchmark.registry import UnknownNameError


def _eps_list(text: str) -> tuple[float, ...]:
    """'2,4,8,16' (units of 1/255), '8/255' or '0.03' -> epsilons in [0, 1]."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "/" in part:
            num, den = part.split("/")
            out.append(float(num) / float(den))
        else:
            value = float(part)
            out.append(value / 255 if value >= 1 else value)
    if not out:
        raise BenchmarkError("--eps needs at least one value, e.g. --eps 8 or --eps 2,4,8,16")
    return tuple(out)


def _attack_options(pairs: list[str] | None) -> dict[str, dict[str, str]]:
    """--attack-opt NAME:key=value (repeatable)."""
    out: dict[str, dict[str, str]] = {}
    for pair in pairs or []:
        if ":" not in pair:
            raise BenchmarkError(f"--attack-opt '{pair}' must be NAME:key=value, e.g. query-bb:queries=500")
        name, kv = pair.split(":", 1)
        out.setdefault(name, {}).update(parse_kv([kv]))
    return out


def _add_run_args(p: argparse.ArgumentParser, attacks_default: str) -> None:
    p.add_argument("--defense", default="none", help="defense name (see `list`)")
    p.add_argument("--attack", default=attacks_default,
                   help="'all', 'none', a comma list (fna,sma) or wildcards (art-*)")
    p.add_argument("--dataset", default="synthped", help="test data set (see `list`)")
    p.add_argument("--data-root", default=None, help="folder of the test data set (not for synthped)")
    p.add_argument("--train-dataset", default=None, help="train on another data set (cross-domain)")
    p.add_argument("--train-data-root", default=None)
    p.add_argument("--backbone", default="reidnet-s")
    p.add_argument("--backbone-weights", default=None, help="local weights file for the backbone")
    p.add_argument("--eps", default="8", help="epsilons in 1/255 units, e.g. 2,4,8,16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--epochs", type=int, default=None, help="override the defense's training epochs")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--metric", default="euclidean", choices=["euclidean", "cosine"])
    p.add_argument("--dataset-opt", action="append", help="key=value option of the data set, e.g. num_ids=60")
    p.add_argument("--defense-opt", action="append", help="key=value option of the defense (repeatable)")
    p.add_argument("--attack-opt", action="append", help="NAME:key=value option of an attack (repeatable)")
    p.add_argument("--ablate", default=None, help="DDID parts to switch off: diffusion,adv-learning,self-meta,fnes")
    p.add_argument("--ddid-generator", default=None, help="local diffusers pipeline folder for DDID phase 1")
    p.add_argument("--retrain", action="store_true", help="ignore cached checkpoints")
    p.add_argument("--no-write", action="store_true", help="do not write results/ and leaderboards/")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--leaderboard-dir", default="leaderboards")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmark",
                                     description="Adversarial robustness benchmark for person re-identification.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list data sets, backbones, attacks and defenses")
    p_list.add_argument("what", nargs="?", default="all",
                        choices=["all", "datasets", "backbones", "attacks", "defenses"])
    p_list.add_argument("--filter", default="*", help="wildcard on names, e.g. 'art-*'")
    _add_run_args(sub.add_parser("run", help="train/load a defense and score it against attacks"), "all")
    _add_run_args(sub.add_parser("train", help="train (or load from cache) a defense and report its checkpoint"),
                  "none")
    p_eval = sub.add_parser("eval", help="clean and attacked scores of a trained defense (no leaderboard write)")
    _add_run_args(p_eval, "none")
    p_plots = sub.add_parser("plots", help="draw every figure from the leaderboards and the latest runs")
    p_plots.add_argument("--leaderboard-dir", default="leaderboards")
    p_plots.add_argument("--results-dir", default="results")
    p_plots.add_argument("--out", default="leaderboards/figures")
    p_tp = sub.add_parser("throughput", help="images/s of extraction, attacks and training steps")
    p_tp.add_argument("--device", default="auto")
    p_tp.add_argument("--backbone", default="reidnet-s")
    p_tp.add_argument("--batch-size", type=int, default=32)
    p_tp.add_argument("--attack", default="all")
    p_tp.add_argument("--defense", default="all")
    p_tp.add_argument("--repeats", type=int, default=3)
    p_tp.add_argument("--leaderboard-dir", default="leaderboards")
    p_tp.add_argument("--threads", type=int, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    logging.getLogger("benchmark").setLevel(logging.INFO)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        from benchmark import commands

        return commands.dispatch(args)
    except (BenchmarkError, UnknownNameError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
