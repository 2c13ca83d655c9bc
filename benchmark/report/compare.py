"""Two runs compared query by query: the paired difference of every score both report, with its interval.

Both runs must have scored the same test queries against the same gallery (same data set and data seed:
their recorded query and gallery digests agree); each query is then its own control, and the interval of
the mean difference resamples identities (`benchmark.core.intervals.paired_difference`), as
the boards' intervals do. Training seeds are compared run by run; over several seeds, the seeds board.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.core.errors import BenchmarkError
from benchmark.core.intervals import paired_difference
from benchmark.report.records import read_json_record


def resolve_run(run: str, folders: list[Path]) -> Path:
    """A run folder: a path, or a run id found in one of `folders` (one line naming them when it is in none)."""
    path = Path(run)
    candidates = [path] if path.is_dir() else [f / run for f in folders if (f / run).is_dir()]
    if not candidates or not (candidates[0] / "per_query.csv").is_file():
        raise BenchmarkError(f"compare: no run folder with a per_query.csv named {run!r} (looked in "
                             f"{', '.join(str(f) for f in folders)}); give a run folder or a run id")
    return candidates[0]


def _label(run: Path) -> str:
    spec = read_json_record(run / "config.json").get("spec", {})
    return f"{spec.get('defense_label', '?')} seed {spec.get('seed', '?')}"


def compare_runs(a: Path, b: Path) -> pd.DataFrame:
    """One row per score both runs have (clean and each attack or suite at each ε): the two means, their
    difference `diff` = a - b in AP (or rank-1) points, its 95 % paired interval, and whether it excludes 0."""
    digests = [read_json_record(run / "config.json").get("data_digests", {}) for run in (a, b)]
    for split in ("query", "gallery"):
        if not digests[0].get(split) or digests[0].get(split) != digests[1].get(split):
            raise BenchmarkError(f"compare: {a.name} and {b.name} scored different {split} sets (data set, data seed "
                                 "or input size differ); a paired comparison needs the same test set")
    left, right = (pd.read_csv(run / "per_query.csv") for run in (a, b))
    if not left["name"].equals(right["name"]) or not left["pid"].equals(right["pid"]):
        raise BenchmarkError(f"compare: {a.name} and {b.name} list their queries differently; rerun one of them")
    scores = [c for c in left.columns if c.endswith(("_ap", "_r1")) and c in right.columns]
    identities = left["pid"].to_numpy()
    rows = []
    for column in scores:
        x, y = left[column].to_numpy(dtype=float), right[column].to_numpy(dtype=float)
        both = ~(np.isnan(x) | np.isnan(y))
        diff, low, high = paired_difference(x, y, identities)
        what, metric = column.rsplit("_", 1)
        rows.append({"score": what, "metric": "mAP" if metric == "ap" else "R1",
                     "a": 100 * float(x[both].mean()), "b": 100 * float(y[both].mean()), "diff": 100 * diff,
                     "low": 100 * low, "high": 100 * high, "queries": int(both.sum()),
                     "verdict": "a higher" if low > 0 else "b higher" if high < 0 else "not separated"})
    return pd.DataFrame(rows)


def compare_text(a: Path, b: Path) -> str:
    """The comparison as a Markdown table under a line naming the two runs."""
    frame = compare_runs(a, b)
    head = f"a = {_label(a)} ({a.name}); b = {_label(b)} ({b.name}); 95 % paired intervals over identities\n\n"
    lines = ["| score | metric | a | b | a - b [95 % interval] | queries | verdict |",
             "| --- | --- | ---: | ---: | --- | ---: | --- |"]
    for r in frame.itertuples(index=False):
        lines.append(f"| {r.score} | {r.metric} | {r.a:.2f} | {r.b:.2f} | {r.diff:+.2f} [{r.low:+.2f}, {r.high:+.2f}] "
                     f"| {r.queries} | {r.verdict} |")
    return head + "\n".join(lines) + "\n"
