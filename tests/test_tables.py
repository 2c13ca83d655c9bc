"""Tables for papers: md / latex / csv from the boards; the README's tables are generated, not typed."""

from __future__ import annotations

from pathlib import Path

from benchmark.leaderboard import write_leaderboards
from benchmark.tables import readme_tables, render, summary_frame
from tests.test_leaderboard import clean_row, make_row

REPO = Path(__file__).resolve().parents[1]


def test_readme_tables_match_the_committed_boards():
    text = (REPO / "README.md").read_text()
    assert "<!-- table:synthped -->" in text
    assert readme_tables(text, REPO / "leaderboards") == text, \
        "README tables are stale: run `python -m benchmark table --readme README.md`"


def test_formats(tmp_path):
    rows = [clean_row("none"), make_row("none", "fna", mAP=1.0), make_row("none", "sma", mAP=3.0),
            clean_row("ddid[ablate=fnes]"), make_row("ddid[ablate=fnes]", "fna", "seen", 20.0)]
    write_leaderboards(rows[:3], tmp_path)
    write_leaderboards(rows[3:], tmp_path)
    frame = summary_frame(tmp_path, "toy")
    assert list(frame["defense"]) == ["none"] and frame["FNA"].item() == 1.0
    assert list(summary_frame(tmp_path, "toy", variants=True)["defense"]) == ["ddid[ablate=fnes]"]
    md = render(frame, "md")
    assert md.splitlines()[1].startswith("| ---") and "| none | 0 | 60.0 | - / - | - | 1.0 | 1.0 | 3.0 |" in md
    latex = render(frame, "latex")
    assert latex.startswith(r"\begin{tabular}") and r"\bottomrule" in latex
    header = render(frame, "csv").splitlines()[0]
    assert header.startswith("defense,seed,clean mAP,worst case mAP / R1,2x iters,min of means,FNA")
