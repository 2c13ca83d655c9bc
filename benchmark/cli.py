"""Command line entry point: `python -m benchmark <command>` (list, run, sweep, merge, table, plots, ...)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import torch

from benchmark.arguments import build_parser
from benchmark.errors import BenchmarkError, RunInterrupted
from benchmark.provenance import set_command
from benchmark.registry import UnknownNameError


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run the command; user errors print one line and return 2, Ctrl-C returns 130."""
    args = build_parser().parse_args(argv)
    set_command(list(argv) if argv is not None else sys.argv[1:])
    ranked = os.environ.get("WORLD_SIZE", "1") not in ("", "1")  # launched by torchrun
    rank = f"rank {os.environ.get('RANK', '?')} " if ranked else ""
    logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s] {rank}%(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    # rank 0 tells the story; the other ranks speak only of problems
    quiet = ranked and os.environ.get("RANK", "0") != "0"
    logging.getLogger("benchmark").setLevel(logging.WARNING if quiet else logging.INFO)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    # bit-reproducible runs: kernels with a deterministic variant use it (CPU runs are then bitwise repeatable;
    # cuBLAS needs a fixed workspace for that on CUDA, set before the first CUDA call)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        from benchmark import commands

        return commands.dispatch(args)
    except RunInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept; finished checkpoints and attack cells stay cached",
              file=sys.stderr)
        return 130
    except (BenchmarkError, UnknownNameError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
