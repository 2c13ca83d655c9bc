"""Paper figures from the boards: each answers one question, in a colour-blind-safe palette.

Widths fit a paper: 3.4 in for one column, 7 in for two. A defense keeps its colour and marker in
every figure (Okabe-Ito palette, assigned in name order). Labels are placed so they never overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullFormatter, ScalarFormatter

from benchmark.core.protocol import STANDARD_EPS_LABEL as EPS
from benchmark.core.protocol import WORST_CASE
from benchmark.report.boards import THROUGHPUT_UNITS, eps_units, is_variant, per_query_column, trained_as
from benchmark.report.captions import suite_label

ONE_COLUMN, TWO_COLUMNS = 3.4, 7.0
#: Okabe & Ito (2008), distinguishable under the common colour-vision deficiencies (their yellow, too faint
#: for lines on white, is replaced by grey)
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#000000", "#999999")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
AGGREGATES = ("clean", WORST_CASE)
Saver = Callable[[plt.Figure, Path], list[Path]]


def defense_styles(defenses: Iterable[str]) -> dict[str, dict[str, str]]:
    """A fixed colour and marker per defense, the same in every figure and on every data set.

    Registered defenses take their place in registry order; others (plugins not installed here,
    labelled variants) follow in name order.
    """
    from defenses import DEFENSES

    wanted = set(defenses)
    registered = DEFENSES.names()
    names = [*registered, *sorted(wanted - set(registered))]
    return {d: {"color": OKABE_ITO[i % len(OKABE_ITO)], "marker": MARKERS[(i // len(OKABE_ITO) + i) % len(MARKERS)]}
            for i, d in enumerate(names) if d in wanted}


def spread_labels(values: list[float], min_gap: float) -> list[float]:
    """Positions as close to `values` as possible with at least `min_gap` between neighbours (1-D repel).

    Labels that would collide form a cluster laid out `min_gap` apart and centred on its members'
    mean; clusters that then collide merge, until none do. Order is kept; a label with room stays put.
    """
    order = sorted(range(len(values)), key=lambda i: values[i])
    clusters: list[list[int]] = []  # runs of indices (in value order) laid out together

    def layout(cluster: list[int]) -> list[float]:
        centre = sum(values[i] for i in cluster) / len(cluster)
        start = centre - min_gap * (len(cluster) - 1) / 2
        return [start + k * min_gap for k in range(len(cluster))]

    for i in order:
        clusters.append([i])
        while len(clusters) > 1 and layout(clusters[-2])[-1] + min_gap > layout(clusters[-1])[0] + 1e-12:
            clusters[-2:] = [clusters[-2] + clusters[-1]]
    placed = [0.0] * len(values)
    for cluster in clusters:
        for i, y in zip(cluster, layout(cluster), strict=True):
            placed[i] = y
    return placed


def _main_defenses(summary: pd.DataFrame) -> pd.DataFrame:
    """Standard recipes only (labels with options, e.g. ablations, have their own figure)."""
    return summary[~is_variant(summary["defense"])]


def _ranked(summary: pd.DataFrame) -> list[str]:
    key = "worst_case_mAP" if "worst_case_mAP" in summary and summary["worst_case_mAP"].notna().any() \
        else "robust_mAP_worst"
    return list(summary.groupby("defense")[key].mean().sort_values(ascending=False).index)


def seed_labels(summary: pd.DataFrame) -> dict[str, str]:
    """Each defense's label with its seeds, e.g. 'ddid (seeds 0-2)', when the defenses' seed sets differ.

    A cell is a mean over a defense's runs; on a data set the seed also draws (synthped), means over
    different seed sets are over different data, so the label says which seeds each row holds."""
    seeds = summary.groupby("defense")["seed"].agg(lambda s: tuple(sorted({int(v) for v in s.dropna()})))
    if seeds.nunique() <= 1:
        return {d: d for d in seeds.index}

    def spell(values: tuple[int, ...]) -> str:
        run = len(values) > 2 and values == tuple(range(values[0], values[-1] + 1))
        text = f"{values[0]}-{values[-1]}" if run else ",".join(map(str, values))
        return f"seed{'s' if len(values) > 1 else ''} {text}"

    return {d: f"{d} ({spell(v)})" if v else d for d, v in seeds.items()}


def heatmap(board: pd.DataFrame, summary: pd.DataFrame, dataset: str, stem: Path,
            save: Saver) -> list[Path]:
    """Defense x attack mAP at 8/255; attacks a defense trained with are boxed; each suite a column, and the
    runs' worst case over all their attacks where it includes the suite on view."""
    scope = board[((board["eps"] == EPS) | (board["seen"] == "clean")) & ~is_variant(board["defense"])]
    if "suite" in scope and "suite" in summary:
        # a run's worst case over all its attacks counts only where its suite is the one on view: a v1 run's
        # would stand above the v2 worst case of the same model
        on_view = dict(zip(summary["defense"], summary["suite"].fillna(""), strict=True))
        other = scope["attack"].eq(WORST_CASE) & scope["suite"].fillna("").ne(scope["defense"].map(on_view))
        scope = scope[~other]
    if scope.empty:
        return []
    table = scope.pivot_table(index="defense", columns="attack", values="mAP", aggfunc="mean")
    seen = scope[scope["seen"] == "seen"].groupby(["defense", "attack"]).size()
    singles = sorted(c for c in table.columns if c not in AGGREGATES and c not in set(scope["suite"].dropna()))
    suites = sorted(c for c in table.columns if c in set(scope["suite"].dropna()) and c not in AGGREGATES)
    columns = ["clean", *singles, *suites, *[c for c in (WORST_CASE,) if c in table.columns]]
    rows = [d for d in _ranked(_main_defenses(summary)) if d in table.index] or list(table.index)
    table = table.reindex(index=rows, columns=columns)
    fig, ax = plt.subplots(figsize=(TWO_COLUMNS, 0.32 * len(rows) + 1.6))
    image = ax.imshow(table.values, cmap="cividis", vmin=0, vmax=max(70.0, float(np.nanmax(table.values))),
                      aspect="auto")
    for i, defense in enumerate(rows):
        for j, attack in enumerate(columns):
            value = table.iat[i, j]
            if np.isnan(value):
                continue
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=6.5,
                    color="black" if value > 35 else "white")
            if (defense, attack) in seen.index:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#D55E00", linewidth=1.8))
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=7)
    labels = seed_labels(_main_defenses(summary))
    ax.set_yticks(range(len(rows)), [labels.get(d, d) for d in rows], fontsize=7)
    ax.grid(False)
    for boundary in (0.5, len(columns) - 0.5 - len(suites) - (WORST_CASE in columns)):
        ax.axvline(boundary, color="white", linewidth=2)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01).set_label("mAP (%)", fontsize=7)
    ax.set_title(f"mAP under each attack at ε = {EPS}, {dataset} (boxed: attack seen in training; "
                 "rows by worst-case mAP)", fontsize=8)
    return save(fig, stem)


def swept(board: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """The attacked rows of standard recipes, and the (attack, defense) pairs measured at two or more ε. A suite's
    per-query worst case counts as an attack (its robustness curve); the worst case over a run's attacks does not,
    as its attacks differ between runs."""
    attacked = board[board["seen"].ne("clean") & board["attack"].ne(WORST_CASE) & ~is_variant(board["defense"])]
    counts = attacked.groupby(["attack", "defense"])["eps_value"].nunique()
    return attacked, counts[counts >= 2]


def _clean_of(board: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The clean rows of the models `rows` were measured on (by checkpoint where rows record one), so a curve's ε = 0
    point comes from the same checkpoints as the rest of it."""
    clean = board[board["defense"].isin(rows["defense"]) & (board["seen"] == "clean")]
    return clean[trained_as(clean, rows)] if "checkpoint" in rows else clean


def eps_curves(board: pd.DataFrame, dataset: str, stem: Path, save: Saver) -> list[Path]:
    """One panel per attack or suite swept over ε, every defense on it; ticks at the measured ε; seen attacks
    hollow. A suite's panel is the robustness curve of its per-query worst case."""
    attacked, swept_pairs = swept(board)
    if swept_pairs.empty:
        return []
    attacks = sorted(swept_pairs.index.get_level_values("attack").unique(),
                     key=lambda a: (not str(a).startswith("standard-"), a))  # suites first
    styles = defense_styles(board["defense"])
    fig, axes = plt.subplots(1, len(attacks), figsize=(TWO_COLUMNS, 2.5), sharey=True, squeeze=False)
    for ax, attack in zip(axes[0], attacks, strict=True):
        ticks: set[float] = {0.0}
        for defense in sorted(swept_pairs.loc[attack].index):
            rows = attacked[(attacked["attack"] == attack) & (attacked["defense"] == defense)]
            curve = rows.groupby(rows["eps"].map(eps_units))["mAP"].mean().sort_index()
            clean = _clean_of(board, rows)["mAP"]
            xs = [0.0, *curve.index]
            ys = [float(clean.mean()) if len(clean) else np.nan, *curve.values]
            ticks |= set(np.round(xs, 3))
            is_seen = (rows["seen"] == "seen").any()
            style = styles[defense]
            ax.plot(xs, ys, color=style["color"], marker=style["marker"], markersize=4, linewidth=1.2,
                    markerfacecolor="white" if is_seen else style["color"], label=defense)
        ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)], fontsize=7)
        ax.set_title(f"{attack} (worst case)" if attack in set(attacked["suite"]) else attack, fontsize=8)
        ax.set_xlabel("ε (×1/255)", fontsize=7)
    axes[0][0].set_ylabel("mAP (%)", fontsize=7)
    legend: dict[str, object] = {}  # every defense once, whichever panels it is on
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="lower center", bbox_to_anchor=(0.5, -0.12),
               ncols=len(legend), fontsize=7, frameon=False)
    fig.suptitle(f"mAP vs ε, {dataset} (hollow markers: attack seen in training)", fontsize=8, y=1.02)
    return save(fig, stem)


def iteration_curves(summary: pd.DataFrame, dataset: str, stem: Path, save: Saver) -> list[Path]:
    """Worst-case mAP against the suite's APGD iterations (1x, and 2x from `--check-convergence`), one line per
    defense over the seeds that have both: a curve still falling at 2x says the suite had not converged."""
    main = _main_defenses(summary)
    if main.empty or "worst_case_mAP_2x" not in main:
        return []
    both = main[main["worst_case_mAP"].notna() & main["worst_case_mAP_2x"].notna()]
    if both.empty:
        return []
    stats = both.groupby("defense")[["worst_case_mAP", "worst_case_mAP_2x"]].mean()
    counts = both.groupby("defense")["seed"].count()
    styles = defense_styles(summary["defense"])
    fig, ax = plt.subplots(figsize=(ONE_COLUMN, 2.6))
    for defense in _ranked(both):
        style, (once, twice) = styles[defense], stats.loc[defense]
        seeds = f" (n={int(counts[defense])})" if counts[defense] > 1 else ""
        ax.plot([1, 2], [once, twice], color=style["color"], marker=style["marker"], markersize=4, linewidth=1.2,
                label=f"{defense}{seeds}")
    ax.set_xticks([1, 2], ["1x", "2x"], fontsize=7)
    ax.set_xlim(0.8, 2.2)
    ax.set_xlabel("APGD iterations of the suite (multiple of its own)", fontsize=7)
    ax.set_ylabel("worst-case mAP (%)", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    suites = ", ".join(sorted(s for s in both.get("suite", pd.Series(dtype=str)).unique() if s))
    ax.set_title(f"Worst case vs iterations, {dataset} ({suites or 'suite'})", fontsize=8)
    return save(fig, stem)


def clean_vs_worst_case(summary: pd.DataFrame, dataset: str, stem: Path, save: Saver) -> list[Path]:
    """Trade-off: clean mAP against worst-case mAP, labelled points, error bars over seeds."""
    main = _main_defenses(summary)
    key = "worst_case_mAP" if "worst_case_mAP" in main and main["worst_case_mAP"].notna().any() else None
    if main.empty or key is None:
        return []
    stats = main.groupby("defense").agg(clean=("clean_mAP", "mean"), clean_sd=("clean_mAP", "std"),
                                        robust=(key, "mean"), robust_sd=(key, "std"), seeds=("seed", "count"))
    styles = defense_styles(summary["defense"])
    fig, ax = plt.subplots(figsize=(ONE_COLUMN, 2.8))
    for defense, r in stats.iterrows():
        style = styles[defense]
        ax.errorbar(r["clean"], r["robust"], xerr=r["clean_sd"] if r["seeds"] > 1 else None,
                    yerr=r["robust_sd"] if r["seeds"] > 1 else None, fmt=style["marker"], color=style["color"],
                    markersize=5, capsize=2, linewidth=1)
    x_max = float(stats["clean"].max())
    y_span = max(float(stats["robust"].max() - stats["robust"].min()), 1.0)
    label_y = spread_labels(list(stats["robust"]), 0.09 * y_span)
    label_x = x_max + 0.06 * max(float(stats["clean"].max() - stats["clean"].min()), 1.0)
    for (defense, r), y in zip(stats.iterrows(), label_y, strict=True):
        seeds = f" (n={int(r['seeds'])})" if r["seeds"] > 1 else ""
        ax.annotate(f"{defense}{seeds}", (r["clean"], r["robust"]), xytext=(label_x, y), textcoords="data",
                    fontsize=6.5, va="center",
                    arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.5})
    ax.set_xlim(right=label_x + 0.25 * (label_x - float(stats["clean"].min()) + 1))
    low = min(min(label_y), float(stats["robust"].min())) - 0.06 * y_span
    high = max(max(label_y), float(stats["robust"].max())) + 0.06 * y_span
    ax.set_ylim(low, high)  # labels spread past the points stay inside the axes
    ax.set_xlabel("clean mAP (%)", fontsize=7)
    ax.set_ylabel(f"worst-case mAP (%), {suite_label(main)}", fontsize=7)
    one_seed = (stats["seeds"] <= 1).all()
    ax.set_title(f"clean vs worst case, {dataset}" + (" (one seed each)" if one_seed else ""), fontsize=8)
    ax.tick_params(labelsize=7)
    return save(fig, stem)


def worst_case_ap(summary: pd.DataFrame, results_dir: Path, dataset: str, stem: Path, save: Saver) -> list[Path]:
    """Per-query worst-case AP, one cumulative distribution per defense (from the runs' per_query.csv)."""
    styles = defense_styles(summary["defense"])
    fig, ax = plt.subplots(figsize=(ONE_COLUMN, 2.6))
    drawn = 0
    runs = _main_defenses(summary).sort_values(["defense", "seed"])
    runs = runs.assign(_rank=runs.groupby("defense").cumcount(),
                       _several=runs.groupby("defense")["seed"].transform("nunique") > 1)
    for _, run in runs.iterrows():
        csv = results_dir / str(run["run_id"]) / "per_query.csv"
        column = per_query_column(WORST_CASE, EPS)
        if not csv.is_file():
            continue
        table = pd.read_csv(csv)
        if column not in table:
            continue
        ap = np.sort(table[column].dropna().to_numpy() * 100)
        share = np.arange(1, len(ap) + 1) / len(ap)
        style = styles[run["defense"]]
        # one line per run: a defense with several seeds tells them apart by dash and label
        several = bool(run["_several"])
        ax.step(ap, share, where="post", color=style["color"], linewidth=1.2,
                linestyle=("-", "--", ":", "-.")[run["_rank"] % 4] if several else "-",
                label=f"{run['defense']} (seed {int(run['seed'])})" if several else run["defense"])
        drawn += 1
    if not drawn:
        plt.close(fig)
        return []
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(0, 100)
    ax.set_xlabel("worst-case AP of a query (%, symlog)", fontsize=7)
    ax.set_ylabel("share of queries at or below", fontsize=7)
    ax.set_title(f"per-query worst case at {EPS}, {dataset}", fontsize=8)
    ax.legend(fontsize=6, loc="lower right", frameon=False)
    ax.tick_params(labelsize=7)
    return save(fig, stem)


def cmc(board: pd.DataFrame, summary: pd.DataFrame, dataset: str, stem: Path, save: Saver) -> list[Path]:
    """Matching rate at ranks 1, 5 and 10 (what the board stores): clean and worst case, side by side."""
    runs = set(_main_defenses(summary)["run_id"])
    scope = board[board["run_id"].isin(runs) & board["attack"].isin(AGGREGATES)]
    if scope["attack"].nunique() < 2:
        return []
    styles = defense_styles(summary["defense"])
    fig, axes = plt.subplots(1, 2, figsize=(TWO_COLUMNS * 0.7, 2.4), sharey=True)
    for ax, attack, title in zip(axes, AGGREGATES, ("clean", f"worst case at {EPS}"), strict=True):
        for defense, rows in scope[scope["attack"] == attack].groupby("defense"):
            values = rows[["R1", "R5", "R10"]].astype(float).mean()
            style = styles[defense]
            ax.plot([1, 5, 10], values.values, color=style["color"], marker=style["marker"], markersize=4,
                    linewidth=1.2, label=defense)
        ax.set_xticks([1, 5, 10])
        ax.set_xlabel("rank", fontsize=7)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("matching rate (%)", fontsize=7)
    axes[1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(f"CMC at ranks 1, 5, 10, {dataset}", fontsize=8, y=1.02)
    return save(fig, stem)


def seen_unseen(summary: pd.DataFrame, dataset: str, stem: Path, save: Saver) -> list[Path]:
    """Per defense: clean, mean over seen and unseen attacks, worst unseen, worst case (a dot plot)."""
    main = _main_defenses(summary)
    if main.empty:
        return []
    measures = (("clean_mAP", "clean", "#000000", "o"), ("seen_mAP_mean", "seen attacks, mean", "#0072B2", "s"),
                ("unseen_mAP_mean", "unseen attacks, mean", "#E69F00", "^"),
                ("unseen_mAP_worst", "unseen attacks, worst", "#D55E00", "v"),
                ("worst_case_mAP", "worst case (suite)", "#CC79A7", "D"))
    order = _ranked(main)[::-1]
    stats = main.groupby("defense").mean(numeric_only=True).reindex(order)
    fig, ax = plt.subplots(figsize=(ONE_COLUMN, 0.3 * len(order) + 1.2))
    ys = np.arange(len(order))
    for key, label, color, marker in measures:
        if key in stats:
            ax.scatter(stats[key], ys, color=color, marker=marker, s=18, label=label, zorder=3,
                       facecolors="none" if key == "seen_mAP_mean" else color)
    ax.set_yticks(ys, order, fontsize=7)
    ax.set_xlabel("mAP (%)", fontsize=7)
    ax.tick_params(labelsize=7)
    axes_height = 0.3 * len(order) + 0.5
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.42 / axes_height), ncols=2, frameon=False)
    ax.set_title(f"seen vs unseen attacks at {EPS}, {dataset}", fontsize=8)
    return save(fig, stem)


def throughput(table: pd.DataFrame, title: str, stem: Path, save: Saver) -> list[Path]:
    """One panel per kind, each with its unit: extraction and training in images/s, attacks per image-iteration."""
    units = THROUGHPUT_UNITS
    kinds = [k for k in units if k in set(table["kind"])] + sorted(set(table["kind"]) - set(units))
    heights = [max(1, (table["kind"] == k).sum()) for k in kinds]
    fig, axes = plt.subplots(len(kinds), 1, figsize=(ONE_COLUMN + 0.6, 0.16 * sum(heights) + 0.7 * len(kinds)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, kind in zip(axes[:, 0], kinds, strict=True):
        rows = table[table["kind"] == kind].sort_values("images_per_second")
        ax.barh(rows["name"], rows["images_per_second"], color="#0072B2")
        rates = rows["images_per_second"].astype(float)
        if rates.max() > 20 * rates.min():  # a log axis only where rates span orders of magnitude
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(units.get(kind, "per s"), fontsize=7)
        ax.set_title(kind, fontsize=8, loc="left")
        ax.tick_params(labelsize=6.5)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save(fig, stem)
