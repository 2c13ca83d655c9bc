"""What each suite member of some runs did: queries attacked and improved, passes per query, seconds.

`python scripts/suite_costs.py RUN_FOLDER [RUN_FOLDER ...]` reads each run's `metrics.json` and prints,
per suite result (a run's `standard-*` worst case), one Markdown row per member and a total row whose
passes are per query of the whole set (a member's passes per attacked query times the queries it
attacked, summed, over the number of queries). Used to compare suite versions on the same checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def suite_rows(run: Path) -> list[str]:
    """Markdown rows of every suite result in one run folder."""
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    defense = config["spec"]["defense_label"]
    rows = []
    for result in metrics["worst_cases"]:
        if "members" not in result:
            continue
        n = result["num_queries"]
        forward = backward = 0.0
        for m in result["members"]:
            passes = m.get("report", {}).get("passes_per_query", {"forward": 0.0, "backward": 0.0})
            forward += passes["forward"] * m["attacked"] / n
            backward += passes["backward"] * m["attacked"] / n
            rows.append(f"| {defense} | {result['suite']} | {m['member']} | {m['attacked']} | {m['improved']} | "
                        f"{passes['forward']:.0f} / {passes['backward']:.0f} | {m['seconds']:.0f} |")
        rows.append(f"| {defense} | **{result['suite']}** | worst-case mAP {result['mAP']:.2f} | {n} | | "
                    f"{forward:.0f} / {backward:.0f} per query | {result['seconds']:.0f} |")
    return rows


def main() -> None:
    """Print the table for the run folders given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with metrics.json and config.json)")
    args = parser.parse_args()
    print("| defense | suite | member | attacked | improved | forward / backward per attacked query | seconds |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for run in args.runs:
        for row in suite_rows(run):
            print(row)


if __name__ == "__main__":
    main()
