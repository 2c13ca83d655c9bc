"""Fair tuning: every defense gets the same small random-search budget, scored on validation identities.

A defense declares the options a search may move (`Defense.search_space`: option -> candidate values).
`sweep --tune NAME[,NAME] --budget N` runs, per defense, its defaults plus N - 1 candidates drawn (seed
`SEARCH_SEED`, no repeats) from that space, each trained on three quarters of the training identities
and attacked on the held-out quarter (`--split validation`, `benchmark.run.holdout`): the test identities
are never seen. The candidate with the highest validation worst-case mAP (the standard suite's per-query
worst case; clean mAP breaks ties) is the choice; `tuning-<dataset>.csv` records every candidate.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd

from benchmark.core.errors import BenchmarkError
from benchmark.report.boards import SUMMARY_TEXT, board_paths, read_board, write_csv
from benchmark.run.spec import defense_label

SEARCH_SEED = 0


def candidates(defense: str, budget: int, seed: int = SEARCH_SEED) -> list[tuple[str, ...]]:
    """The --defense-opt lists of a search: () (the defaults) first, then budget - 1 distinct random draws."""
    from defenses.base import DEFENSES

    space = DEFENSES.get(defense).search_space
    if not space:
        raise BenchmarkError(f"defense '{defense}' declares no search space; --tune takes defenses that do: "
                             f"{', '.join(n for n in DEFENSES.names() if DEFENSES.get(n).search_space)}")
    if budget < 1:
        raise BenchmarkError(f"--budget {budget}: give at least 1 (the defaults)")
    rng = random.Random(f"{seed}:{defense}")
    total = math.prod(len(v) for v in space.values())
    out: list[tuple[str, ...]] = [()]
    labels = {defense_label(defense, ())}  # a draw equal to the defaults is the same recipe: not a new candidate
    while len(out) < min(budget, total):
        draw = tuple(f"{k}={rng.choice(list(v))}" for k, v in sorted(space.items()))
        label = defense_label(defense, draw)
        if label not in labels:
            labels.add(label)
            out.append(draw)
    return out


def recorded_candidates(sweep_dir: str | Path, dataset: str, defense: str) -> list[tuple[int, str, str]]:
    """(index, options, label) of each candidate the sweep ran, as its cells recorded them when expanded.

    The label a candidate's rows carry depends on the defaults when it ran, so it is read from the
    cells, never recomputed; empty for a sweep folder whose cells predate recorded labels.
    """
    found: dict[int, tuple[int, str, str]] = {}
    for path in sorted(Path(sweep_dir).glob("cells/eval-*/cell.json")):
        cell = json.loads(path.read_text())
        if cell.get("candidate") is None or not cell.get("recipe_label") or "spec" not in cell:
            continue
        if cell["spec"]["data"]["name"] != dataset or cell["spec"]["defense"]["name"] != defense:
            continue
        options = " ".join(cell.get("recipe_options") or ()) or "(defaults)"
        found[int(cell["candidate"])] = (int(cell["candidate"]), options, cell["recipe_label"])
    return [found[i] for i in sorted(found)]


def report(leaderboard_dir: str | Path, dataset: str, defenses: list[str], budget: int,
           sweep_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per candidate found on the validation board, with `chosen` marking each defense's best.

    Candidates and their labels come from the sweep's cells (`sweep_dir`); without recorded ones they
    are recomputed from today's defaults, and `labels` says so.
    """
    _, summary_path = board_paths(leaderboard_dir, dataset, official=False)
    summary = read_board(summary_path, SUMMARY_TEXT)
    rows = []
    for defense in defenses:
        recorded = recorded_candidates(sweep_dir, dataset, defense) if sweep_dir else []
        source = "recorded" if recorded else "recomputed"
        searched = recorded or [(i, " ".join(o) or "(defaults)", defense_label(defense, o))
                                for i, o in enumerate(candidates(defense, budget))]
        for i, options, label in searched:
            hit = summary[(summary["defense"] == label) & summary["settings"].str.contains("split=validation")] \
                if not summary.empty else summary
            for _, s in hit.iterrows():
                rows.append({"dataset": dataset, "defense": defense, "candidate": i, "options": options,
                             "label": label, "labels": source, "seed": int(s["seed"]),
                             "settings": s["settings"], "val_clean_mAP": float(s["clean_mAP"]),
                             "val_worst_case_mAP": float(s.get("worst_case_mAP", math.nan)),
                             "run_id": s["run_id"]})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["chosen"] = False
    for _, idx in frame.groupby("defense").groups.items():
        block = frame.loc[idx].sort_values(["val_worst_case_mAP", "val_clean_mAP"], ascending=False)
        frame.loc[block.index[0], "chosen"] = True
    return frame


def write_report(frame: pd.DataFrame, out_dir: str | Path, dataset: str) -> list[Path]:
    """`tuning-<dataset>.csv` and its figure (validation worst case against clean mAP per candidate)."""
    from benchmark.report.plots import save_figure
    from benchmark.report.study_figures import tuning

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / f"tuning-{dataset}.csv"
    write_csv(frame, csv)
    return [csv, *tuning(frame, dataset, out / f"tuning-{dataset}", save_figure)]
