"""Command line entry point: `python -m benchmark <command>` (list, run, sweep, merge, table, plots, ...)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from benchmark.cli.arguments import build_parser
from benchmark.cli.logs import configure_logging
from benchmark.core.errors import BenchmarkError, RunInterrupted
from benchmark.core.provenance import set_command
from benchmark.core.registry import UnknownNameError


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run the command; user errors print one line and return 2, Ctrl-C returns 130."""
    args = build_parser().parse_args(argv)
    set_command(list(argv) if argv is not None else sys.argv[1:])
    configure_logging(sys.stderr)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        from benchmark.cli import commands

        return commands.dispatch(args)
    except RunInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept; finished checkpoints and attack cells stay cached",
              file=sys.stderr)
        return 130
    except (BenchmarkError, UnknownNameError) as exc:
        # one line whatever the user typed: a value with a line break is shown escaped
        print("error: " + str(exc).replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused: one line naming the path and what to do
        what = f" {exc.filename}" if exc.filename else ""
        print(f"error: could not use{what}: {exc.strerror or exc} (disk full, read-only, not a folder or a name too "
              "long?); free space, fix the permissions or choose another path", file=sys.stderr)
        return 2
