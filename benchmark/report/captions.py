"""What tables and pages say about board rows beyond their numbers: the flag codes still in force, and sentences
that stand once under a table instead of beside every row."""

from __future__ import annotations

import pandas as pd

#: codes earlier runs wrote into rows that no longer flag anything; readers leave them out. `weak-attack` (the
#: suite far below the best single attack) said something about the single attacks, true of nearly every
#: adversarially trained model, not about the defense: `single_attack_caption` states it once per table instead
RETIRED_FLAGS = frozenset({"weak-attack"})

#: the suite's worst case this far below the lowest single attack: the single attack's number is no robustness figure
SINGLE_ATTACK_GAP = 5.0


def single_attack_caption(summary: pd.DataFrame) -> str:
    """How many of a summary's rows have a suite worst case more than `SINGLE_ATTACK_GAP` points below their lowest
    single attack, as one sentence ('' when no row has both numbers). It describes the single attacks, not a
    defense, so it is a caption and not a flag."""
    if summary.empty or not {"worst_case_mAP", "robust_mAP_worst"} <= set(summary.columns):
        return ""
    worst = pd.to_numeric(summary["worst_case_mAP"], errors="coerce")
    single = pd.to_numeric(summary["robust_mAP_worst"], errors="coerce")
    both = worst.notna() & single.notna()
    if not both.any():
        return ""
    below = int((worst[both] < single[both] - SINGLE_ATTACK_GAP).sum())
    return (f"On {below} of {int(both.sum())} rows the suite's worst case is more than {SINGLE_ATTACK_GAP:g} mAP "
            "points below the lowest single attack (\"min of means\"): a single attack's mAP is an upper bound on "
            "robustness, never a robustness figure.")


def suite_caption(summary: pd.DataFrame) -> str:
    """Which suite's per-query worst case the rows show, as one sentence ('' without a suite column): the headline
    suite is shown only where it covers every model compared, so a reader must be told which one it is."""
    if summary.empty or "suite" not in summary:
        return ""
    suites = summary["suite"].fillna("").astype(str)
    named = sorted(set(suites) - {""})
    if not named:
        return ""
    if len(named) == 1 and suites.ne("").all():
        return f"Worst case: the per-query worst case of `{named[0]}` on every row."
    parts = [f"`{s}` ({', '.join(sorted(set(summary.loc[suites.eq(s), 'defense'])))})" for s in named]
    rest = "; rows of no suite show single attacks only" if suites.eq("").any() else ""
    return f"Worst case: the per-query worst case of {'; '.join(parts)}{rest}."


def suite_label(frame: pd.DataFrame) -> str:
    """The suites whose worst case a figure's rows show, for its axis ('standard suite' without a suite column)."""
    named = sorted(set(frame["suite"].fillna("").astype(str)) - {""}) if "suite" in frame else []
    return ", ".join(named) or "standard suite"


def current_flags(codes: object) -> list[str]:
    """The `;`-joined flag codes of a board row, without retired ones."""
    if not isinstance(codes, str):
        return []
    return [c for c in codes.split(";") if c and c != "nan" and c.partition(":")[0] not in RETIRED_FLAGS]
