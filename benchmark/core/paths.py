"""Where the benchmark keeps caches (generated data, checkpoints) and outputs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$RRB_CACHE_DIR`, else `$XDG_CACHE_HOME/reid-robustness-bench`, else `~/.cache/...`."""
    env = os.environ.get("RRB_CACHE_DIR")
    if env:
        path = Path(env)
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reid-robustness-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def home_dir() -> Path:
    """The user's workspace, where runs write: `$RRB_HOME`, else `$XDG_DATA_HOME/reid-robustness-bench`, else
    `~/.local/share/reid-robustness-bench`. Never the repository: only `publish` writes the official records."""
    env = os.environ.get("RRB_HOME")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "reid-robustness-bench"


def runs_dir() -> Path:
    """Where runs write their run folders by default: `<workspace>/runs`."""
    return home_dir() / "runs"


def boards_dir() -> Path:
    """Where runs upsert their rows by default: `<workspace>/leaderboards`."""
    return home_dir() / "leaderboards"


#: the official records in a checkout, written only by `publish` (relative to the checkout's root)
OFFICIAL_RESULTS = "results"
OFFICIAL_BOARDS = "leaderboards"
