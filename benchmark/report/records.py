"""Reading a run folder's JSON records: a broken file is one line naming it, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmark.core.errors import BenchmarkError


def read_json_record(path: Path) -> dict[str, Any]:
    """A run record (`config.json`, `metrics.json`, `ranking.json`) as a dict."""
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchmarkError(f"{path} is not valid JSON ({exc}); restore the run folder from git or remove "
                             "it") from None
    if not isinstance(record, dict):
        raise BenchmarkError(f"{path} holds {type(record).__name__}, not a record; restore the run folder from git "
                             "or remove it")
    return record
