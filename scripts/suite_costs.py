"""What each suite member of some runs did: queries attacked and improved, passes per query, seconds.

`python scripts/suite_costs.py RUN_FOLDER [RUN_FOLDER ...]` reads each run's `metrics.json` and prints,
per suite result (a run's `standard-*` worst case), one Markdown row per member and a total row whose
passes are per query of the whole set (a member's passes per attacked query times the queries it
attacked, summed, over the number of queries). Used to compare suite versions on the same checkpoint.

`--csv PATH` writes the study table instead, keeping the rows of runs already in it that are not given
(`leaderboards/studies/suite-v2-vs-v1-synthped.csv`): one row per
suite result with clean and worst-case mAP, the worst case's 95 % identity-bootstrap interval, passes per
query, each member's attacked/improved queries, and, where another given run attacked the same checkpoint
with another suite, the paired interval of the difference over the same queries (this run minus that one;
of several, the oldest suite, so v2 and v3 both pair with v1 and v1 with v2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.core.intervals import identity_bootstrap, paired_difference
from benchmark.report.boards import per_query_column, training_identity, write_csv


def suite_rows(run: Path) -> list[str]:
    """Markdown rows of every suite result in one run folder."""
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    defense = config["spec"]["defense_label"]
    rows = []
    for result in metrics["worst_cases"]:
        if "members" not in result:
            continue
        for m in result["members"]:
            passes = _member_passes(m)
            rows.append(f"| {defense} | {result['suite']} | {m['member']} | {m['attacked']} | {m['improved']} | "
                        f"{passes['forward']:.0f} / {passes['backward']:.0f} | {m['seconds']:.0f} |")
        forward, backward = _passes(result)
        rows.append(f"| {defense} | **{result['suite']}** | worst-case mAP {result['mAP']:.2f} | "
                    f"{result['num_queries']} | | "
                    f"{forward:.0f} / {backward:.0f} per query | {result['seconds']:.0f} |")
    return rows


def _member_passes(member: dict[str, Any]) -> dict[str, float]:
    """A suite member's forward and backward passes per attacked query (0 where the run did not count them)."""
    return member.get("report", {}).get("passes_per_query", {"forward": 0.0, "backward": 0.0})


def _passes(result: dict[str, Any]) -> tuple[float, float]:
    """Forward and backward passes per query of the whole set for one suite result."""
    n, forward, backward = result["num_queries"], 0.0, 0.0
    for m in result["members"]:
        passes = _member_passes(m)
        forward += passes["forward"] * m["attacked"] / n
        backward += passes["backward"] * m["attacked"] / n
    return forward, backward


def study_records(runs: list[Path]) -> list[dict[str, Any]]:
    """One study row per suite result of the runs, paired with the other runs on the same checkpoint."""
    records, per_query = [], {}
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        config = json.loads((run / "config.json").read_text())
        spec = config["spec"]
        table = pd.read_csv(run / "per_query.csv")
        for result in metrics["worst_cases"]:
            if "members" not in result:
                continue
            eps = result.get("eps", "8/255")
            column = per_query_column(result["suite"], eps)
            ap = table[column].to_numpy(dtype=float) if column in table else np.full(len(table), np.nan)
            low, high = identity_bootstrap(ap, table["pid"].to_numpy())
            forward, backward = _passes(result)
            records.append({
                "dataset": spec["data"]["name"], "scale": f"{spec['settings'] or 'default'} ({config['dataset']})",
                "defense": spec["defense_label"], "seed": spec["seed"], "suite": result["suite"], "eps": eps,
                "clean_mAP": metrics["clean"]["mAP"], "worst_case_mAP": result["mAP"],
                "worst_case_mAP_low": 100 * low, "worst_case_mAP_high": 100 * high,
                "worst_case_R1": result["rank1"], "forward_per_query": forward, "backward_per_query": backward,
                "attack_seconds": result["seconds"],
                "members": ";".join(f"{m['member']}:{m['attacked']}/{m['improved']}" for m in result["members"]),
                "paired_vs": "", "paired_diff": np.nan, "paired_low": np.nan, "paired_high": np.nan,
                "run_id": run.name, "git_commit": config["provenance"]["git_commit"],
                "_key": Path(str(config["checkpoint"])).name, "_digest": config.get("model_digest", ""),
                "_deployed": (spec["defense_label"], eps)})
            per_query[len(records) - 1] = (ap, table["pid"].to_numpy())
    # one trained model as the boards define it (`training_identity`: its digest, else its checkpoint key, the
    # cache folder's name), deployed behind one defense and attacked at one ε
    trained = training_identity(pd.DataFrame({"checkpoint": [r["_key"] for r in records],
                                              "model_digest": [r["_digest"] for r in records]}))
    models = [(t, *r["_deployed"]) for t, r in zip(trained, records, strict=True)]
    for i, row in enumerate(records):
        others = [j for j in range(len(records))
                  if j != i and models[j] == models[i] and records[j]["suite"] != row["suite"]]
        if others:
            j = min(others, key=lambda k: records[k]["suite"])  # the oldest other suite: the baseline
            (a, pids), (b, _) = per_query[i], per_query[j]
            diff, low, high = paired_difference(a, b, pids)
            row.update(paired_vs=records[j]["suite"], paired_diff=100 * diff, paired_low=100 * low,
                       paired_high=100 * high)
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]


def main() -> None:
    """Print the table for the run folders given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with metrics.json and config.json)")
    parser.add_argument("--csv", type=Path, default=None, help="write the study table to this CSV instead")
    args = parser.parse_args()
    if args.csv is not None:
        new = pd.DataFrame(study_records(args.runs))
        if args.csv.is_file():  # rows of runs not given stay: a study grows run by run
            old = pd.read_csv(args.csv, dtype={"git_commit": str})
            new = pd.concat([old[~old["run_id"].isin(set(new["run_id"]))], new], ignore_index=True)
        write_csv(new.sort_values(["dataset", "scale", "defense", "seed", "suite"], kind="stable"), args.csv)
        print(f"wrote {args.csv} ({len(new)} rows)")
        return
    print("| defense | suite | member | attacked | improved | forward / backward per attacked query | seconds |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for run in args.runs:
        for row in suite_rows(run):
            print(row)


if __name__ == "__main__":
    main()
