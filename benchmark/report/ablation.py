"""A defense's ablation study (DDID: the paper's Table 3) read from the official boards, over seeds.

`sweep --ablation NAME` runs the steps a defense declares (`Defense.ablation`); this module finds their
rows on the boards by each step's canonical defense label, and gives per step the mean, sample standard
deviation and n over seeds of clean mAP, the suite's per-query worst-case mAP and the headline attacks'
mAP at the standard ε. A step's difference from the step it is judged against counts as real only when
it exceeds the two seed spreads added (the rule of the seeds board). Beside it, the paired view: the
worst-case difference within each shared seed and its 95 % Student-t interval, which is blind to a seed
that moves both steps alike (on synthped the seed also draws the data set).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from benchmark.core.protocol import HEADLINE_ATTACKS
from benchmark.core.seed_stats import paired_interval, paired_verdict, verdict
from benchmark.report.boards import (
    STANDARD_EPS,
    board_paths,
    headline_rows,
    read_board,
    read_summary,
    rows_of_model,
)
from benchmark.run.spec import defense_label

#: the single attacks reported next to the worst case (the paper's Table 3 columns)
ATTACKS = HEADLINE_ATTACKS
METRICS = ("clean_mAP", "worst_case_mAP", *(f"{a}_mAP" for a in ATTACKS))


def per_seed(leaderboard_dir: str | Path, dataset: str, defense: str) -> pd.DataFrame:
    """One row per (step, seed) found on the official board: the step's label and its metrics."""
    from defenses.base import DEFENSES

    steps = DEFENSES.get(defense).ablation
    board_path, summary_path = board_paths(leaderboard_dir, dataset, official=True)
    board, summary = read_board(board_path), read_summary(summary_path)
    if board.empty or summary.empty:
        return pd.DataFrame()
    labels = [defense_label(step.defense, step.options) for step in steps]
    summary = headline_rows(summary[summary["settings"].eq("") & summary["defense"].isin(labels)])
    at8 = board[board["eps"] == STANDARD_EPS]
    rows = []
    for order, step in enumerate(steps):
        label = defense_label(step.defense, step.options)
        for _, s in summary[summary["defense"] == label].iterrows():
            row = {"order": order, "step": step.label, "defense": label, "versus": step.versus or "",
                   "seed": int(s["seed"]), "run_id": s["run_id"], "clean_mAP": float(s["clean_mAP"]),
                   "worst_case_mAP": float(s.get("worst_case_mAP", math.nan)),
                   "suite": str(s.get("suite", "") or "")}
            run = rows_of_model(at8, s)
            for a in ATTACKS:
                hit = run[run["attack"] == a]
                row[f"{a}_mAP"] = float(hit["mAP"].iloc[0]) if len(hit) else math.nan
            rows.append(row)
    return pd.DataFrame(rows)


def summary(leaderboard_dir: str | Path, dataset: str, defense: str) -> pd.DataFrame:
    """One row per ablation step with rows on the board: n, seeds, mean and sd of every metric, and the
    worst-case difference from the step it is judged against with the verdict, and the paired view
    (per-seed differences, their interval and verdict)."""
    seeds = per_seed(leaderboard_dir, dataset, defense)
    if seeds.empty:
        return pd.DataFrame()
    rows = []
    for (_order, step), group in seeds.groupby(["order", "step"], sort=True):
        row = {"step": step, "defense": group["defense"].iloc[0], "versus": group["versus"].iloc[0],
               "n": len(group), "seeds": ",".join(str(s) for s in sorted(group["seed"]))}
        for m in METRICS:
            values = group[m].dropna()
            row[f"{m}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{m}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    by_step = out.set_index("step")
    worst = seeds.pivot_table(index="seed", columns="step", values="worst_case_mAP")
    out["worst_case_delta"] = math.nan
    out["verdict"] = ""
    out["paired_deltas"] = ""
    out["paired_ci_low"] = out["paired_ci_high"] = math.nan
    out["paired_verdict"] = ""
    for i, r in out.iterrows():
        if r["versus"] and r["versus"] in by_step.index:
            ref = by_step.loc[r["versus"]]
            delta = r["worst_case_mAP_mean"] - ref["worst_case_mAP_mean"]
            out.at[i, "worst_case_delta"] = delta
            out.at[i, "verdict"] = verdict(delta, r["worst_case_mAP_sd"], ref["worst_case_mAP_sd"])
            paired = (worst[r["step"]] - worst[r["versus"]]).dropna()
            low, high = paired_interval(paired)
            out.at[i, "paired_deltas"] = ", ".join(f"{d:+.1f}" for d in paired)
            out.at[i, "paired_ci_low"], out.at[i, "paired_ci_high"] = low, high
            out.at[i, "paired_verdict"] = paired_verdict(low, high)
    return out


def _pm(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.1f}" + ("" if math.isnan(sd) else f" ± {sd:.1f}")


def table(leaderboard_dir: str | Path, dataset: str, defense: str) -> pd.DataFrame:
    """The study as text cells for the README and papers (mean ± sd over seeds)."""
    frame = summary(leaderboard_dir, dataset, defense)
    if frame.empty:
        return frame
    names = {"clean_mAP": "clean mAP", "worst_case_mAP": "worst case mAP", "fna_mAP": "FNA", "sma_mAP": "SMA",
             "ifgsm_mAP": "I-FGSM"}
    rows = []
    for _, r in frame.iterrows():
        row = {"step": r["step"], "n": str(int(r["n"]))}
        row.update({names[m]: _pm(r[f"{m}_mean"], r[f"{m}_sd"]) for m in METRICS})
        delta = r["worst_case_delta"]
        row["worst case vs"] = "-" if math.isnan(delta) else f"{delta:+.1f} vs {r['versus']}: {r['verdict']}"
        row["paired, per seed (95 % CI)"] = "-" if not r["paired_deltas"] else (
            f"{r['paired_deltas']}" + ("" if math.isnan(r["paired_ci_low"]) else
                                       f" ({r['paired_ci_low']:+.1f} to {r['paired_ci_high']:+.1f})")
            + f": {r['paired_verdict']}")
        rows.append(row)
    return pd.DataFrame(rows)
