"""The boards' column reference and the sanity-flag glossary, generated from the code that writes them.

Pages mark where a reference goes with `<!-- columns:<kind> -->` ... `<!-- /columns -->`;
`python -m benchmark table --readme PAGE` fills them (with the result tables), and a test checks the
committed pages are current, so a column cannot change without its documentation.
"""

from __future__ import annotations

import re
from dataclasses import fields

from benchmark.report.boards import (
    SEED_GROUP,
    SEED_INTERVALS,
    SEED_METRICS,
    LeaderboardRow,
    SummaryRow,
    ThroughputRow,
    doc_of,
)
from benchmark.run.sanity import FLAG_MEANINGS

MARKER = re.compile(r"(<!-- columns:(?P<kind>[\w-]+) -->\n)(?P<body>.*?)(<!-- /columns -->)", re.S)
ROW_TYPES = {"row": LeaderboardRow, "summary": SummaryRow, "throughput": ThroughputRow}
_SEED_METRIC_WORDS = {"clean_mAP": "clean mAP", "worst_case_mAP": "worst-case mAP (the headline)",
                      "worst_case_R1": "worst-case rank-1", "robust_mAP_mean": "mean mAP over the single attacks"}


def _table(head: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "| --- | --- |"]
    lines += [f"| `{name}` | {doc} |" for name, doc in rows]
    return "\n".join(lines) + "\n"


def seeds_columns() -> list[tuple[str, str]]:
    """The columns of `seeds-<dataset>.csv`, in the order `seed_summary` writes them."""
    rows = [(c, doc_of(LeaderboardRow, c)) for c in SEED_GROUP]
    rows += [("n", "how many training seeds the recipe has on the summary board"), ("seeds", "which seeds")]
    for metric in SEED_METRICS:
        rows += [(f"{metric}_mean", f"mean {_SEED_METRIC_WORDS[metric]} over the seeds"),
                 (f"{metric}_sd", "its sample standard deviation over training seeds (empty with one seed)")]
        if metric in SEED_INTERVALS:
            rows += [(f"{metric}_ci_low", "query sampling beside it: the mean over seeds of each seed's 95 % "
                                          "bootstrap interval over test identities, lower end (empty when a seed's "
                                          "row has no interval)"),
                     (f"{metric}_ci_high", "upper end of the same")]
    rows.append(("vs_best", "the gap to the best recipe's worst case on the data set, called real only when it "
                            "exceeds the two seed spreads added, and the paired gap on the seeds both have"))
    return rows


def reference(kind: str) -> str:
    """Markdown reference of one kind: `row`, `summary`, `seeds`, `throughput` (columns) or `flags`."""
    if kind == "flags":
        return _table(("flag", "raised when"), list(FLAG_MEANINGS.items()))
    if kind == "seeds":
        return _table(("column", "meaning"), seeds_columns())
    if kind not in ROW_TYPES:
        raise ValueError(f"unknown column reference {kind!r}; one of {', '.join([*ROW_TYPES, 'seeds', 'flags'])}")
    return _table(("column", "meaning"), [(f.name, f.metadata["doc"]) for f in fields(ROW_TYPES[kind])])


def fill_references(text: str) -> str:
    """The page with every marked column reference regenerated."""
    return MARKER.sub(lambda m: m.group(1) + reference(m.group("kind")) + m.group(4), text)
