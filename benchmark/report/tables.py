"""Tables for papers and the README, printed from the official boards (`python -m benchmark table`).

The README's result tables sit between `<!-- table:<dataset>[:<variant>] -->` and `<!-- /table -->`
markers and are regenerated with `python -m benchmark table --readme`; a test checks they match. Variants:
`seeds` (recipes over seeds), `suites` (each suite's worst case per model), `curves` (a suite's worst case over
ε per model), `variants` (labelled recipes), `ablation-<defense>` (a defense's ablation study).
"""

from __future__ import annotations

import argparse
import io
import math
import re
from pathlib import Path

import pandas as pd

from benchmark.core.atomic import atomic_write_text
from benchmark.core.errors import BenchmarkError
from benchmark.core.protocol import HEADLINE_ATTACKS
from benchmark.report import ablation
from benchmark.report.boards import (
    MODEL_KEY,
    RECIPE,
    STANDARD_EPS,
    SUMMARY_TEXT,
    board_paths,
    check_boards,
    eps_units,
    headline_rows,
    is_variant,
    on_recipe_test_set,
    read_board,
    read_summary,
    rows_of_model,
    seeds_path,
    summary_on_view,
)
from benchmark.report.captions import current_flags, single_attack_caption, suite_caption
from benchmark.report.columns import fill_references

NAMES = {"fna": "FNA", "sma": "SMA", "ifgsm": "I-FGSM"}
MARKER = re.compile(r"(<!-- table:(?P<key>[\w.:-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


#: every character LaTeX treats specially, as text (a label is data, never markup)
_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SPECIAL = re.compile("|".join(re.escape(c) for c in _LATEX_ESCAPES))


def _fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def _with_interval(row: pd.Series, metric: str, text: bool = False) -> float | str:
    """A number with its 95 % interval, `60.57 [55.10, 66.02]`, where the row has one (runs before intervals were
    recorded have none: the number alone)."""
    value, low, high = (row.get(f"{metric}{end}", math.nan) for end in ("", "_low", "_high"))
    if pd.isna(low) or pd.isna(high):
        return _fmt(float(value)) if text else float(value)
    return f"{_fmt(float(value))} [{_fmt(float(low))}, {_fmt(float(high))}]"


def _protocol_rows(summary: pd.DataFrame, variants: bool) -> pd.DataFrame:
    """Summary rows at the protocol's settings: plain defenses, or (`variants`) only labelled recipes."""
    plain = summary[summary["settings"].eq("")]
    return plain[is_variant(plain["defense"]) == variants]


def summary_frame(leaderboard_dir: str | Path, dataset: str, variants: bool = False) -> pd.DataFrame:
    """One row per defense run on the official board, by the suite's per-query worst-case mAP (then the mean):
    clean mAP, worst case (mAP / R1, with the doubled-iteration check), the single attacks' min of means,
    headline attacks, mean, unseen, flags.

    `variants=False` keeps defenses without options; `True` keeps only labelled recipes (e.g. ablations).
    """
    board_path, summary_path = board_paths(leaderboard_dir, dataset, official=True)
    board, summary = read_board(board_path), read_summary(summary_path)
    if board.empty or summary.empty:
        return pd.DataFrame()
    summary = summary_on_view(_protocol_rows(summary, variants))
    rows = []
    at8 = board[board["eps"] == STANDARD_EPS]
    # a leaderboard is read top-down: highest worst-case mAP first, then mean robust mAP (ties by name)
    worst = summary["worst_case_mAP"] if "worst_case_mAP" in summary else pd.Series(math.nan, index=summary.index)
    summary = summary.assign(_worst=-worst.fillna(-1), _order=-summary["robust_mAP_mean"].fillna(-1))
    summary = summary.sort_values(["_worst", "_order", "defense", "seed"])
    for _, s in summary.iterrows():
        attacks = rows_of_model(at8, s)
        row = {"defense": s["defense"], "seed": str(int(s["seed"])),
               "clean mAP": _with_interval(s, "clean_mAP")}
        if not variants:
            row["worst case mAP / R1"] = f"{_with_interval(s, 'worst_case_mAP', text=True)} / " \
                                         f"{_with_interval(s, 'worst_case_R1', text=True)}"
            row["2x iters"] = s.get("worst_case_mAP_2x", math.nan)
            row["min of means"] = s["robust_mAP_worst"]
        for a in HEADLINE_ATTACKS:
            hit = attacks[attacks["attack"] == a]
            row[NAMES[a]] = float(hit["mAP"].iloc[0]) if len(hit) else math.nan
        if not variants:
            # one column whatever a run covered: the count travels with the mean, not in the header
            row["mean of single attacks (n)"] = f"{_fmt(s['robust_mAP_mean'])} ({int(s['attacks'])})"
            row["unseen mean / worst"] = f"{_fmt(s['unseen_mAP_mean'])} / {_fmt(s['unseen_mAP_worst'])}"
        row["attacked with"] = s["attacked_with"]
        if not variants:
            row["flags"] = _short_flags(s.get("flags", ""))
        rows.append(row)
    return pd.DataFrame(rows)


def _short_flags(flags: object) -> str:
    """Flag codes without their attack names, each once ('-' when none)."""
    return ", ".join(dict.fromkeys(f.split(":")[0] for f in current_flags(flags))) or "-"


def render(frame: pd.DataFrame, fmt: str) -> str:
    """Markdown, LaTeX (booktabs) or CSV text of a table."""
    if frame.empty:
        return "(no official rows)\n"
    if fmt == "csv":
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False, float_format="%.2f", lineterminator="\n")
        return buffer.getvalue()
    cells = [[str(c) for c in frame.columns]] + [
        [_fmt(v) if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    if fmt == "md":
        lines = ["| " + " | ".join(cells[0]) + " |", "| " + " | ".join("---" for _ in cells[0]) + " |"]
        # a `|` inside a label would end its cell
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells[1:]]
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        def esc(text: str) -> str:
            return _LATEX_SPECIAL.sub(lambda m: _LATEX_ESCAPES[m.group()], text)

        lines = [r"\begin{tabular}{l" + "r" * (len(cells[0]) - 1) + "}", r"\toprule",
                 " & ".join(esc(c) for c in cells[0]) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(c) for c in r) + r" \\" for r in cells[1:]]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown format {fmt!r}")


def seeds_frame(leaderboard_dir: str | Path, dataset: str) -> pd.DataFrame:
    """Standard recipes over their seeds (`seeds-<dataset>.csv`): n, mean ± sd of clean and worst-case mAP, and
    whether the gap to the best worst case exceeds the seed spread."""
    _, summary_path = board_paths(leaderboard_dir, dataset, official=True)
    seeds = read_board(seeds_path(summary_path), ("defense", "settings", "seeds", "vs_best", "suite"))
    if seeds.empty:
        return pd.DataFrame()
    seeds = headline_rows(_protocol_rows(seeds, variants=False), RECIPE)

    def pm(row: pd.Series, metric: str) -> str:
        """mean ± training-seed sd [query-bootstrap interval], each part where the board has it."""
        sd = row[f"{metric}_sd"]
        low, high = row.get(f"{metric}_ci_low", math.nan), row.get(f"{metric}_ci_high", math.nan)
        return (_fmt(row[f"{metric}_mean"]) + ("" if pd.isna(sd) else f" ± {_fmt(sd)}")
                + ("" if pd.isna(low) or pd.isna(high) else f" [{_fmt(low)}, {_fmt(high)}]"))

    return pd.DataFrame([{"defense": r["defense"], "n": str(int(r["n"])), "seeds": r["seeds"],
                          "clean mAP": pm(r, "clean_mAP"), "worst case mAP": pm(r, "worst_case_mAP"),
                          "vs the best worst case": r["vs_best"]} for _, r in seeds.iterrows()])


def suites_frame(leaderboard_dir: str | Path, dataset: str) -> pd.DataFrame:
    """Every suite's worst case side by side, one row per model with more than one suite at the protocol's
    settings: mAP [95 % interval] per suite, and each newer suite's difference from the oldest."""
    _, summary_path = board_paths(leaderboard_dir, dataset, official=True)
    summary = read_board(summary_path, SUMMARY_TEXT)
    if summary.empty or "suite" not in summary:
        return pd.DataFrame()
    summary = _protocol_rows(summary[summary["suite"].ne("")], variants=False)
    rows = []
    for _, model in summary.groupby(list(MODEL_KEY), sort=False):
        if model["suite"].nunique() < 2:
            continue
        by_suite = model.set_index("suite")
        row = {"defense": model["defense"].iloc[0], "seed": str(int(model["seed"].iloc[0]))}
        for suite in sorted(by_suite.index):
            row[f"{suite} worst case mAP"] = _with_interval(by_suite.loc[suite], "worst_case_mAP", text=True)
        first, *later = sorted(by_suite.index)  # each newer version against the first: what it adds
        for suite in later:
            row[f"{suite} - {first}"] = float(by_suite.loc[suite, "worst_case_mAP"]
                                              - by_suite.loc[first, "worst_case_mAP"])
        rows.append(row)
    return pd.DataFrame(rows)


def curves_frame(leaderboard_dir: str | Path, dataset: str) -> pd.DataFrame:
    """Robustness curves as a table: one row per model and suite measured at two or more ε, at the protocol's
    settings and on the recipe's test set: clean mAP and the suite's per-query worst-case mAP [95 % interval] at
    each ε. Rows by worst case at the standard ε, best first; a model keeps its own row (no mean over seeds
    hides which checkpoints a point comes from)."""
    board_path, summary_path = board_paths(leaderboard_dir, dataset, official=True)
    board, summary = read_board(board_path), read_board(summary_path, SUMMARY_TEXT)
    if board.empty or summary.empty or "suite" not in summary:
        return pd.DataFrame()
    summary = summary[summary["suite"].ne("") & on_recipe_test_set(summary)]
    summary = _protocol_rows(summary, variants=False)
    rows = []
    for _, s in summary.iterrows():
        model = rows_of_model(board, s)
        curve = model[model["attack"] == s["suite"]]
        if curve["eps"].nunique() < 2:
            continue
        clean = model[model["seen"] == "clean"]
        row = {"defense": s["defense"], "seed": str(int(s["seed"])), "suite": s["suite"],
               "clean mAP": _with_interval(clean.iloc[0], "mAP", text=True) if len(clean) else "-",
               "_worst": -float(s["worst_case_mAP"]) if pd.notna(s["worst_case_mAP"]) else 0.0, "_seed": int(s["seed"])}
        for _, point in curve.sort_values("eps", key=lambda e: e.map(eps_units)).iterrows():
            row[f"ε {point['eps']}"] = _with_interval(point, "mAP", text=True)
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows).sort_values(["_worst", "defense", "_seed", "suite"], kind="stable")
    eps_columns = sorted((c for c in frame.columns if c.startswith("ε ")), key=lambda c: eps_units(c[2:]))
    return frame[["defense", "seed", "suite", "clean mAP", *eps_columns]].fillna("-")


def _caption(leaderboard_dir: str | Path, dataset: str) -> str:
    """The summary table's caption paragraph (Markdown), '' when there is nothing to say."""
    _, summary_path = board_paths(leaderboard_dir, dataset, official=True)
    summary = read_summary(summary_path)
    if summary.empty:
        return ""
    shown = summary_on_view(_protocol_rows(summary, variants=False))
    sentence = " ".join(filter(None, (suite_caption(shown), single_attack_caption(shown))))
    return f"\n{sentence}\n" if sentence else ""


def readme_tables(text: str, leaderboard_dir: str | Path) -> str:
    """The README with every marked table regenerated from the boards."""
    def fill(match: re.Match) -> str:
        dataset, _, variant = match.group("key").partition(":")
        if variant == "seeds":
            frame = seeds_frame(leaderboard_dir, dataset)
        elif variant == "suites":
            frame = suites_frame(leaderboard_dir, dataset)
        elif variant == "curves":
            frame = curves_frame(leaderboard_dir, dataset)
        elif variant.startswith("ablation-"):
            frame = ablation.table(leaderboard_dir, dataset, variant.removeprefix("ablation-"))
        else:
            frame = summary_frame(leaderboard_dir, dataset, variants=variant == "variants")
            if not variant:
                return match.group(1) + render(frame, "md") + _caption(leaderboard_dir, dataset) + match.group(4)
        return match.group(1) + render(frame, "md") + match.group(4)

    return fill_references(MARKER.sub(fill, text))


def cmd_table(args: argparse.Namespace) -> int:
    """Print a summary table, or rewrite the README's marked tables (--readme)."""
    if args.readme:
        path = Path(args.readme)
        if not path.is_file():
            raise BenchmarkError(f"table --readme {path}: no such file; name the page whose marked tables to fill")
        check_boards(Path(args.leaderboard_dir))
        atomic_write_text(path, readme_tables(path.read_text(), args.leaderboard_dir))
        print(f"updated the tables in {path}")
        return 0
    board, _ = board_paths(args.leaderboard_dir, args.dataset, official=True)
    if board.is_file():
        check_boards(Path(args.leaderboard_dir))
    else:
        found = sorted(p.stem for p in Path(args.leaderboard_dir).glob("*.csv")
                       if not p.stem.startswith(("summary-", "seeds-", "throughput-")))
        raise BenchmarkError(f"table: no board {board}; boards in {args.leaderboard_dir}: "
                             f"{', '.join(found) or 'none'} (--dataset, --leaderboard-dir)")
    if args.suites:
        print(render(suites_frame(args.leaderboard_dir, args.dataset), args.format), end="")
        return 0
    if args.curves:
        print(render(curves_frame(args.leaderboard_dir, args.dataset), args.format), end="")
        return 0
    print(render(summary_frame(args.leaderboard_dir, args.dataset, args.variants), args.format), end="")
    if args.format == "md" and not args.variants:
        print(_caption(args.leaderboard_dir, args.dataset), end="")
    return 0
