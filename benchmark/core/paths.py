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
