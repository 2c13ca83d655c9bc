"""Log lines of the command line and of sweep workers: time-stamped, rank-prefixed under torchrun."""

from __future__ import annotations

import logging
import os
from typing import TextIO


def configure_logging(stream: TextIO) -> logging.Handler:
    """Send the benchmark's log lines to `stream` (replacing earlier handlers); returns the new handler.

    Under torchrun rank 0 tells the story and the other ranks speak only of problems.
    """
    ranked = os.environ.get("WORLD_SIZE", "1") not in ("", "1")
    rank = f"rank {os.environ.get('RANK', '?')} " if ranked else ""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(f"[%(asctime)s] {rank}%(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    quiet = ranked and os.environ.get("RANK", "0") != "0"
    logging.getLogger("benchmark").setLevel(logging.WARNING if quiet else logging.INFO)
    return handler
