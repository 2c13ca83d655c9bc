"""Tables for papers: md / latex / csv from the boards; the README's tables are generated, not typed."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest

from benchmark.report.boards import LeaderboardRow, SummaryRow, ThroughputRow, write_leaderboards
from benchmark.report.columns import seeds_columns
from benchmark.report.tables import readme_tables, render, summary_frame
from benchmark.run.sanity import Flag
from tests.test_leaderboard import clean_row, make_row

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("page, marker", [("README.md", "<!-- table:synthped:seeds -->"),
                                          ("docs/results.md", "<!-- table:synthped -->"),
                                          ("leaderboards/README.md", "<!-- columns:row -->"),
                                          ("docs/protocol.md", "<!-- columns:flags -->")])
def test_generated_tables_match_the_committed_boards(page, marker):
    text = (REPO / page).read_text()
    assert marker in text
    assert readme_tables(text, REPO / "leaderboards") == text, \
        f"{page} tables are stale: run `python -m benchmark table --readme {page}`"


def test_every_page_with_generated_tables_is_current():
    pages = [p for p in [REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("leaderboards/**/*.md")]
             if "<!-- table:" in p.read_text() or "<!-- columns:" in p.read_text()]
    assert len(pages) >= 4
    stale = [p.name for p in pages if readme_tables(p.read_text(), REPO / "leaderboards") != p.read_text()]
    assert not stale, f"stale generated tables in {stale}: run `python -m benchmark table --readme PAGE`"


def test_every_committed_board_column_is_documented():
    documented = {"row": [f.name for f in fields(LeaderboardRow)], "summary": [f.name for f in fields(SummaryRow)],
                  "seeds": [c for c, _ in seeds_columns()], "throughput": [f.name for f in fields(ThroughputRow)]}
    for board in (REPO / "leaderboards").glob("*.csv"):
        kind = next((k for k in ("summary", "seeds", "throughput") if board.name.startswith(k)), "row")
        header = pd.read_csv(board, nrows=0).columns
        assert set(header) <= set(documented[kind]), (board.name, set(header) - set(documented[kind]))
    for row_type in (LeaderboardRow, SummaryRow, ThroughputRow):
        assert all(len(f.metadata.get("doc", "")) > 10 for f in fields(row_type)), row_type


def test_a_flag_without_documentation_is_refused():
    with pytest.raises(ValueError, match="FLAG_MEANINGS"):
        Flag("new-flag", "undocumented")
    assert Flag("eps-rise:fna", "documented").code == "eps-rise:fna"


def test_latex_and_markdown_escape_every_special_character():
    frame = pd.DataFrame([{"defense": "a_b\\c{d}%$#&~^|e", "mAP": 1.0}])
    latex = render(frame, "latex").splitlines()[4]
    assert latex == (r"a\_b\textbackslash{}c\{d\}\%\$\#\&\textasciitilde{}\textasciicircum{}|e & 1.0 \\")
    assert "a_b\\c{d}%$#&~^\\|e" in render(frame, "md")


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


def test_single_attacks_rerun_on_the_same_checkpoint_fill_the_table_and_others_do_not(tmp_path):
    import dataclasses

    def run(run_id, checkpoint, *rows):
        return [dataclasses.replace(r, run_id=run_id, checkpoint=checkpoint) for r in rows]

    write_leaderboards(run("all", "ck1", clean_row("none"), make_row("none", "sma", mAP=3.0),
                           make_row("none", "mifgsm", mAP=2.0), make_row("none", "odfa", mAP=4.0)), tmp_path)
    write_leaderboards(run("eps-sweep", "ck1", make_row("none", "fna", mAP=1.0)), tmp_path)  # same model, later
    frame = summary_frame(tmp_path, "toy")
    assert frame["FNA"].item() == 1.0 and frame["SMA"].item() == 3.0
    # a new training of the model (e.g. changed defaults) supersedes ck1: its rows leave the table with it
    write_leaderboards(run("retrained", "ck2", clean_row("none"), make_row("none", "ifgsm", mAP=9.0)), tmp_path)
    frame = summary_frame(tmp_path, "toy")
    assert frame["I-FGSM"].item() == 9.0 and frame[["FNA", "SMA"]].isna().all(axis=None)


def _ablation_rows(step_defense: str, seed: int, clean: float, worst: float, fna: float) -> list:
    import dataclasses

    suite = dataclasses.replace(make_row(step_defense, "standard-v1", "worst-case", worst, seed=seed),
                                suite="standard-v1", run_id=f"{step_defense}-{seed}")
    rows = [dataclasses.replace(clean_row(step_defense, seed), mAP=clean, suite="standard-v1"),
            dataclasses.replace(make_row(step_defense, "fna", "seen", fna, seed=seed), suite="standard-v1"), suite]
    return [dataclasses.replace(r, run_id=f"{step_defense}-{seed}") for r in rows]


def test_ablation_table_gives_mean_sd_over_seeds_and_calls_differences_by_the_seed_spread(tmp_path):
    import math

    from benchmark.report import ablation

    base, full = "ddid[ablate=adv-learning+diffusion+fnes+self-meta]", "ddid"
    for seed, (wb, wf) in enumerate([(4.0, 9.0), (5.0, 10.0), (6.0, 11.0)]):  # one write per run
        write_leaderboards(_ablation_rows("metric-at", seed, 70.0 + seed, 5.0 + 0.1 * seed, 20.0), tmp_path)
        write_leaderboards(_ablation_rows(base, seed, 60.0, wb, 15.0), tmp_path)
        write_leaderboards(_ablation_rows(full, seed, 55.0, wf, 18.0 + seed), tmp_path)
    stats = ablation.summary(tmp_path, "toy", "ddid").set_index("step")
    assert list(stats.index) == ["metric-at", "DDID base (all parts off)", "all parts (DDID)"]
    assert stats.loc["DDID base (all parts off)", "worst_case_mAP_mean"] == 5.0
    assert stats.loc["DDID base (all parts off)", "worst_case_mAP_sd"] == 1.0 and (stats["n"] == 3).all()
    assert stats.loc["all parts (DDID)", "fna_mAP_mean"] == 19.0
    assert math.isnan(stats.loc["metric-at", "worst_case_delta"])
    # all parts vs metric-at: +4.9, sds 1.0 + 0.1 -> separated; base vs metric-at: -0.1 -> within the spread
    assert stats.loc["all parts (DDID)", "verdict"] == "separated"
    assert stats.loc["DDID base (all parts off)", "verdict"] == "within seed spread"
    text = render(ablation.table(tmp_path, "toy", "ddid"), "md")
    assert stats.loc["DDID base (all parts off)", "paired_verdict"] == "within seed spread"
    row = ("| all parts (DDID) | 3 | 55.0 ± 0.0 | 10.0 ± 1.0 | 19.0 ± 1.0 | - | - | +4.9 vs metric-at: separated "
           "| +4.0, +4.9, +5.8 (+2.7 to +7.1): separated |")
    assert row in text
    readme = "<!-- table:toy:ablation-ddid -->\nold\n<!-- /table -->"
    assert "all parts (DDID)" in readme_tables(readme, tmp_path)


def test_ablation_paired_view_separates_a_steady_gain_that_a_seed_wide_shift_hides(tmp_path):
    from benchmark.report import ablation

    for seed, worst in enumerate([5.0, 8.0, 11.0]):  # each seed is easier for both steps alike
        write_leaderboards(_ablation_rows("metric-at", seed, 70.0, worst, 20.0), tmp_path)
        write_leaderboards(_ablation_rows("ddid", seed, 70.0, worst + 1.0 + 0.1 * (seed - 1), 20.0), tmp_path)
    row = ablation.summary(tmp_path, "toy", "ddid").set_index("step").loc["all parts (DDID)"]
    assert row["verdict"] == "within seed spread"  # +1.0 against sds of 3.0 and 3.1
    assert row["paired_deltas"] == "+0.9, +1.0, +1.1" and row["paired_verdict"] == "separated"
    assert 0.7 < row["paired_ci_low"] < 1.0 < row["paired_ci_high"] < 1.3


def test_tables_show_the_interval_a_row_records_and_the_number_alone_where_it_has_none(tmp_path):
    import dataclasses

    clean = dataclasses.replace(clean_row("ddid"), mAP_low=55.0, mAP_high=65.0, suite="standard-v1")
    suite = dataclasses.replace(make_row("ddid", "standard-v1", "worst-case", 10.0), mAP_low=8.0, mAP_high=12.5,
                                R1_low=9.0, R1_high=11.0, suite="standard-v1")
    write_leaderboards([clean, suite], tmp_path)
    write_leaderboards([clean_row("none"), make_row("none", "fna", mAP=3.0)], tmp_path)
    frame = summary_frame(tmp_path, "toy").set_index("defense")
    assert frame.loc["ddid", "clean mAP"] == "60.0 [55.0, 65.0]"
    assert frame.loc["ddid", "worst case mAP / R1"] == "10.0 [8.0, 12.5] / 10.0 [9.0, 11.0]"
    assert frame.loc["none", "clean mAP"] == 60.0


def test_a_retired_flag_is_not_shown_and_the_single_attack_gap_is_stated_once_under_the_table(tmp_path):
    import dataclasses

    rows = [dataclasses.replace(r, flags="weak-attack;zero-grad:fna")  # as published rows of earlier runs carry it
            for r in _ablation_rows("ddid", 0, clean=60.0, worst=10.0, fna=20.0)]
    write_leaderboards(rows, tmp_path)
    write_leaderboards([clean_row("none"), make_row("none", "fna", mAP=3.0)], tmp_path)  # no suite: not counted
    assert summary_frame(tmp_path, "toy").set_index("defense").loc["ddid", "flags"] == "zero-grad"
    page = readme_tables("<!-- table:toy -->\n<!-- /table -->\n", tmp_path)
    assert "weak-attack" not in page
    assert "On 1 of 1 rows the suite's worst case is more than 5 mAP points below the lowest single attack" in page
    assert page.endswith("never a robustness figure.\n<!-- /table -->\n")


def test_the_curves_table_gives_each_models_suite_worst_case_at_every_eps_it_was_run_at(tmp_path):
    import dataclasses

    from benchmark.report.tables import curves_frame

    def suite_at(defense: str, eps: str, mAP: float, seed: int = 1) -> LeaderboardRow:
        return dataclasses.replace(make_row(defense, "standard-v2", "worst-case", mAP, eps=eps, seed=seed),
                                   suite="standard-v2", mAP_low=mAP - 1, mAP_high=mAP + 1,
                                   checkpoint=f"{defense}{seed}")

    def clean(defense: str, seed: int = 1) -> LeaderboardRow:
        return dataclasses.replace(clean_row(defense, seed), suite="standard-v2", checkpoint=f"{defense}{seed}")

    write_leaderboards([clean("none"), suite_at("none", "8/255", 1.0), suite_at("none", "2/255", 20.0),
                        suite_at("none", "16/255", 0.5)], tmp_path)
    write_leaderboards([clean("ddid"), suite_at("ddid", "2/255", 30.0), suite_at("ddid", "8/255", 9.0)], tmp_path)
    write_leaderboards([clean("goat"), suite_at("goat", "8/255", 4.0)], tmp_path)  # one ε: no curve
    # a seed-2 row published before --data-seed sits on another test set: it has no row here
    old = [dataclasses.replace(r, data_seed="") for r in (clean("jpeg", 2), suite_at("jpeg", "2/255", 3.0, 2),
                                                          suite_at("jpeg", "8/255", 2.0, 2))]
    write_leaderboards(old, tmp_path)
    frame = curves_frame(tmp_path, "toy")
    assert list(frame["defense"]) == ["ddid", "none"]  # best worst case at 8/255 first
    assert list(frame.columns) == ["defense", "seed", "suite", "clean mAP", "ε 2/255", "ε 8/255", "ε 16/255"]
    none = frame.set_index("defense").loc["none"]
    assert (none["ε 2/255"], none["ε 16/255"]) == ("20.0 [19.0, 21.0]", "0.5 [-0.5, 1.5]")
    assert frame.set_index("defense").loc["ddid", "ε 16/255"] == "-"
    page = readme_tables("<!-- table:toy:curves -->\n<!-- /table -->\n", tmp_path)
    assert "| ddid | 1 | standard-v2 | 60.0 | 30.0 [29.0, 31.0] | 9.0 [8.0, 10.0] | - |" in page


def test_a_suite_only_run_shows_its_models_single_attacks(tmp_path):
    """standard-v2 run alone on a checkpoint already attacked (v1 plus FNA and SMA): the table shows v2's worst
    case with the single attacks the model has on the board, not an empty mean."""
    import dataclasses

    def run(rows, run_id, suite):
        return [dataclasses.replace(r, run_id=run_id, suite=suite, checkpoint="ck") for r in rows]

    write_leaderboards(run([clean_row("ddid"), make_row("ddid", "fna", "unseen", 30.0),
                            make_row("ddid", "sma", "unseen", 40.0),
                            make_row("ddid", "standard-v1", "worst-case", 10.0)], "v1", "standard-v1"), tmp_path)
    write_leaderboards(run([clean_row("ddid"), make_row("ddid", "standard-v2", "worst-case", 7.0)], "v2",
                           "standard-v2"), tmp_path)
    row = summary_frame(tmp_path, "toy").iloc[0]
    assert row["worst case mAP / R1"] == "7.0 / 7.0" and row["min of means"] == 30.0
    assert row["mean of single attacks (n)"] == "35.0 (2)" and row["FNA"] == 30.0
    seeds = pd.read_csv(tmp_path / "seeds-toy.csv").set_index("suite")
    assert seeds.loc["standard-v2", "robust_mAP_mean_mean"] == seeds.loc["standard-v1", "robust_mAP_mean_mean"] == 35.0


def test_the_caption_names_the_suite_on_view():
    from benchmark.report.captions import suite_caption

    frame = pd.DataFrame({"defense": ["ddid", "none", "old"], "suite": ["standard-v2", "standard-v2", ""]})
    assert suite_caption(frame.iloc[:2]) == "Worst case: the per-query worst case of `standard-v2` on every row."
    assert suite_caption(frame.assign(suite=["standard-v2", "standard-v1", ""])) == (
        "Worst case: the per-query worst case of `standard-v1` (none); `standard-v2` (ddid); rows of no suite "
        "show single attacks only.")
    assert suite_caption(frame.assign(suite="")) == "" and suite_caption(frame.drop(columns="suite")) == ""
