"""Compare the records of two sets of runs of the same specifications, ignoring provenance.

`python scripts/compare_runs.py BEFORE AFTER` takes two folders, each with the `results/` and `lb/`
that runs wrote there (`--results-dir BEFORE/results --leaderboard-dir BEFORE/lb`), and reports, per
board, the columns whose values differ, and, per run folder (paired in name order), whether
`per_query.csv`, `per_id_ap.csv` and `ranking.json` are byte-identical. Exit 1 when a number differs.
Used to show that a refactoring left every number as it was.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
from pathlib import Path

import pandas as pd

#: columns that say when, where and by what command a row was made, not what it measured
PROVENANCE = {"date", "git_commit", "train_commit", "train_date", "command", "run_id", "checkpoint",
              "attack_seconds", "train_seconds", "device"}
RECORDS = ("per_query.csv", "per_id_ap.csv", "ranking.json")


def compare(before: Path, after: Path) -> int:
    """Print the comparison; returns the number of differing measured columns and record files."""
    problems = 0
    for board in sorted(p.relative_to(before / "lb") for p in (before / "lb").rglob("*.csv")):
        old, new = pd.read_csv(before / "lb" / board), pd.read_csv(after / "lb" / board)
        differing = [c for c in old.columns if c in new.columns and not old[c].equals(new[c])]
        measured = [c for c in differing if c not in PROVENANCE]
        problems += len(measured) + (set(old.columns) != set(new.columns)) + (len(old) != len(new))
        print(f"{board}: {len(old)} / {len(new)} rows; provenance columns that differ: "
              f"{', '.join(c for c in differing if c in PROVENANCE) or 'none'}; measured columns that differ: "
              f"{', '.join(measured) or 'none'}")
    runs = zip(sorted((before / "results").iterdir()), sorted((after / "results").iterdir()), strict=True)
    for old_run, new_run in runs:
        for name in RECORDS:
            same = filecmp.cmp(old_run / name, new_run / name, shallow=False)
            problems += not same
            print(f"{old_run.name} vs {new_run.name}: {name} {'byte-identical' if same else 'DIFFERS'}")
    return problems


def main() -> int:
    """Command line: two folders; exit 0 when every number is the same."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    return 1 if compare(args.before, args.after) else 0


if __name__ == "__main__":
    sys.exit(main())
