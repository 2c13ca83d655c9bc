"""Two defenses compared query by query: the paired difference of every score both report, with its interval.

Every run must have scored the same test queries against the same gallery (same data set and data seed:
their recorded query and gallery digests agree); each query is then its own control. One run a side: the
interval of the mean difference resamples identities, as the boards' intervals do. Several runs a side,
one per training seed (the same seeds on both): runs are paired by seed and the interval resamples
training seeds and identities together (`benchmark.core.intervals.seed_and_identity_bootstrap`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.core.errors import BenchmarkError
from benchmark.core.intervals import seed_and_identity_bootstrap
from benchmark.report.records import read_json_record


def resolve_run(run: str, folders: list[Path]) -> Path:
    """A run folder: a path, or a run id found in one of `folders` (one line naming them when it is in none)."""
    path = Path(run)
    candidates = [path] if path.is_dir() else [f / run for f in folders if (f / run).is_dir()]
    if not candidates or not (candidates[0] / "per_query.csv").is_file():
        raise BenchmarkError(f"compare: no run folder with a per_query.csv named {run!r} (looked in "
                             f"{', '.join(str(f) for f in folders)}); give a run folder or a run id")
    return candidates[0]


def suite_on_view(sides: list[str], boards: Path, dataset: str, default: str) -> str:
    """The suite the official board shows for the published defenses named among `sides` (`headline_rows`: the
    headline suite where it covers every model of theirs, else the newest that does), so `compare` without
    --suite compares what the tables show; `default` when no side names a published defense."""
    from benchmark.report.boards import board_paths, headline_rows, read_summary

    path = board_paths(boards, dataset, official=True)[1]
    summary = read_summary(path) if path.is_file() else pd.DataFrame()
    if summary.empty:
        return default
    named = summary[summary["settings"].fillna("").eq("") & summary["defense"].isin(sides)
                    & summary["suite"].fillna("").ne("")]
    shown = set(headline_rows(named)["suite"]) if not named.empty else set()
    return next(iter(shown)) if len(shown) == 1 else default


def published_runs(defense: str, boards: Path, dataset: str, suite: str, seeds: list[int] | None = None
                   ) -> list[str]:
    """Run ids of a defense's published models (one per training seed) on an official summary board: the run that
    gave each model's `suite` row, at the protocol's settings and on the recipe's test set (`seeds`: only those)."""
    from benchmark.report.boards import board_paths, read_summary

    path = board_paths(boards, dataset, official=True)[1]
    summary = read_summary(path) if path.is_file() else pd.DataFrame()
    if summary.empty:
        raise BenchmarkError(f"compare {defense}: no official summary board {path}; name runs instead, or pass "
                             "--dataset and --leaderboard-dir")
    plain = summary[summary["settings"].fillna("").eq("")]
    if not plain["defense"].eq(defense).any():
        raise BenchmarkError(f"compare {defense}: not a run and not a defense on {path} (it has "
                             f"{', '.join(sorted(set(plain['defense'])))}); name a run or a published defense")
    mine = plain[plain["defense"].eq(defense)]
    rows = mine[mine["suite"].fillna("").eq(suite)]
    if seeds is not None:
        rows = rows[rows["seed"].astype(int).isin(seeds)]
    if rows.empty:
        have = ", ".join(f"{s or 'no suite'} (seeds {','.join(str(int(x)) for x in sorted(g['seed']))})"
                         for s, g in mine.groupby(mine["suite"].fillna("")))
        raise BenchmarkError(f"compare {defense}: no published {suite} run"
                             f"{' of seeds ' + ','.join(map(str, seeds)) if seeds is not None else ''} on "
                             f"{path.name} (it has {have}); pass --suite or --seeds")
    return rows.sort_values("seed")["run_id"].astype(str).tolist()


def resolve_side(side: str, folders: list[Path], boards: Path, dataset: str, suite: str,
                 seeds: list[int] | None = None) -> list[Path]:
    """One side of a comparison: run folders or ids (comma list, one per training seed), or the name of a published
    defense, which stands for its runs of `suite` on the official board (one per training seed)."""
    names = [run for run in side.split(",") if run]
    if len(names) == 1 and not any(Path(f, names[0]).is_dir() for f in [Path("."), *folders]):
        names = published_runs(names[0], boards, dataset, suite, seeds)
    return [resolve_run(run, folders) for run in names]


def _spec(run: Path) -> dict:
    return read_json_record(run / "config.json").get("spec", {})


def _label(runs: list[Path]) -> str:
    specs = [_spec(run) for run in runs]
    seeds = ",".join(str(spec.get("seed", "?")) for spec in specs)
    names = runs[0].name if len(runs) == 1 else f"{len(runs)} runs"
    return f"{specs[0].get('defense_label', '?')} seed{'s' if len(runs) > 1 else ''} {seeds} ({names})"


def pair_by_seed(a: list[Path], b: list[Path]) -> list[tuple[Path, Path]]:
    """Runs of the two sides paired by training seed (one run each: paired as given, whatever their seeds)."""
    if not a or not b:
        raise BenchmarkError("compare: name a run (or a comma list of runs) on each side")
    if len(a) == 1 and len(b) == 1:
        return [(a[0], b[0])]
    sides = []
    for runs in (a, b):
        by_seed = {str(_spec(run).get("seed", "?")): run for run in runs}
        if len(by_seed) < len(runs):
            names = ", ".join(r.name for r in runs)
            raise BenchmarkError(f"compare: two runs of one training seed on one side ({names}); give one run per seed")
        sides.append(by_seed)
    if set(sides[0]) != set(sides[1]):
        raise BenchmarkError(f"compare: the sides were trained on different seeds ({','.join(sorted(sides[0]))} vs "
                             f"{','.join(sorted(sides[1]))}); give runs of the same training seeds on both (with "
                             "defense names: --seeds)")
    return [(sides[0][seed], sides[1][seed]) for seed in sorted(sides[0], key=lambda s: (len(s), s))]


def compare_runs(a: Path | list[Path], b: Path | list[Path]) -> pd.DataFrame:
    """One row per score both sides have (clean and each attack or suite at each ε): the two means, their
    difference `diff` = a - b in AP (or rank-1) points, its 95 % paired interval, and whether it excludes 0.

    A side may be several runs, one per training seed, paired with the other side's run of the same seed:
    the means are over seeds and queries, and the interval resamples training seeds and test identities
    (`seed_and_identity_bootstrap`); `per_seed` gives each seed's difference."""
    return _compare_pairs(pair_by_seed(_side(a), _side(b)))


def _side(runs: Path | list[Path]) -> list[Path]:
    return [runs] if isinstance(runs, Path) else list(runs)


def _compare_pairs(pairs: list[tuple[Path, Path]]) -> pd.DataFrame:
    """`compare_runs` on runs already paired by seed."""
    runs = [run for pair in pairs for run in pair]
    digests = [read_json_record(run / "config.json").get("data_digests", {}) for run in runs]
    for split in ("query", "gallery"):
        for run, d in zip(runs, digests, strict=True):
            if not d.get(split) or not digests[0].get(split) or d.get(split) != digests[0].get(split):
                raise BenchmarkError(f"compare: {runs[0].name} and {run.name} scored different {split} sets (data "
                                     "set, data seed or input size differ); a paired comparison needs the same test "
                                     "set")
    tables = [pd.read_csv(run / "per_query.csv") for run in runs]
    for run, table in zip(runs[1:], tables[1:], strict=True):
        if not tables[0]["name"].equals(table["name"]) or not tables[0]["pid"].equals(table["pid"]):
            raise BenchmarkError(f"compare: {runs[0].name} and {run.name} list their queries differently; rerun one "
                                 "of them")
    scores = [c for c in tables[0].columns if c.endswith(("_ap", "_r1")) and all(c in t for t in tables)]
    identities = tables[0]["pid"].to_numpy()
    rows = []
    for column in scores:
        x = np.stack([table[column].to_numpy(dtype=float) for table in tables[0::2]])  # a side: every pair's first
        y = np.stack([table[column].to_numpy(dtype=float) for table in tables[1::2]])
        kept = ~(np.isnan(x) | np.isnan(y)).any(axis=0)
        diff, low, high = seed_and_identity_bootstrap(x - y, identities)
        what, metric = column.rsplit("_", 1)
        rows.append({"score": what, "metric": "mAP" if metric == "ap" else "R1",
                     "a": 100 * float(x[:, kept].mean()), "b": 100 * float(y[:, kept].mean()), "diff": 100 * diff,
                     "low": 100 * low, "high": 100 * high, "queries": int(kept.sum()),
                     "verdict": "a higher" if low > 0 else "b higher" if high < 0 else "not separated",
                     "per_seed": " ".join(f"{100 * float(d[kept].mean()):+.2f}" for d in x - y)})
    return pd.DataFrame(rows)


def compare_text(a: Path | list[Path], b: Path | list[Path]) -> str:
    """The comparison as a Markdown table under a line naming the two sides."""
    pairs = pair_by_seed(_side(a), _side(b))
    frame = _compare_pairs(pairs)
    several = len(pairs) > 1
    over = "training seeds and identities" if several else "identities"
    head = (f"a = {_label([p[0] for p in pairs])}; b = {_label([p[1] for p in pairs])}; 95 % paired intervals "
            f"over {over}\n\n")
    extra = (" per seed |", " --- |") if several else ("", "")
    lines = ["| score | metric | a | b | a - b [95 % interval] | queries | verdict |" + extra[0],
             "| --- | --- | ---: | ---: | --- | ---: | --- |" + extra[1]]
    for r in frame.itertuples(index=False):
        lines.append(f"| {r.score} | {r.metric} | {r.a:.2f} | {r.b:.2f} | {r.diff:+.2f} [{r.low:+.2f}, {r.high:+.2f}] "
                     f"| {r.queries} | {r.verdict} |" + (f" {r.per_seed} |" if several else ""))
    return head + "\n".join(lines) + "\n"
