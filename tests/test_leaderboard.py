"""Leaderboards: upsert by key, formula neutralisation, concurrent writers, summaries."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp

import pandas as pd

from benchmark.report.boards import LeaderboardRow, neutralise, write_leaderboards


def make_row(defense="none", attack="fna", seen="unseen", mAP=10.0, eps="8/255", seed=0, command="python -m x"):
    return LeaderboardRow(dataset="toy", train_dataset="toy", defense=defense, backbone="b", attack=attack, eps=eps,
                          eps_value=8 / 255, family="guided", knowledge="white-box", seen=seen, attacked_with="direct",
                          clean_mAP=60.0, clean_R1=70.0, mAP=mAP, R1=mAP, R5=mAP, R10=mAP, mINP=mAP, mAP_drop=60 - mAP,
                          id_ap_var=1.0, id_ap_worst10=0.5, clean_id_ap_var=2.0, num_queries=10, attack_seconds=1.0,
                          queries_per_image=float("nan"), flags="", train_seconds=3.0, run_id="r", seed=seed,
                          package_version="0", torch_version="t", git_commit="c", device="cpu",
                          date="2026-01-01T00:00:00Z", command=command, data_seed="0")


def clean_row(defense="none", seed=0):
    return dataclasses.replace(make_row(defense, "clean", "clean", 60.0, "0", seed), family="-", knowledge="-")


def test_upsert_replaces_rows_with_the_same_key(tmp_path):
    write_leaderboards([clean_row(), make_row(mAP=10.0), make_row(attack="sma", mAP=20.0)], tmp_path)
    write_leaderboards([make_row(mAP=5.0)], tmp_path)
    board = pd.read_csv(tmp_path / "toy.csv")
    assert len(board) == 3
    assert board.loc[board["attack"] == "fna", "mAP"].item() == 5.0


def test_formula_cells_are_neutralised(tmp_path):
    write_leaderboards([make_row(command="=cmd|' /C calc'!A0")], tmp_path)
    board = pd.read_csv(tmp_path / "toy.csv")
    assert board["command"].item().startswith("'=")
    assert neutralise("-1+2") == "'-1+2" and neutralise(-1.0) == -1.0 and neutralise("none") == "none"


def _writer(args):
    directory, worker = args
    for i in range(5):
        write_leaderboards([make_row(defense=f"d{worker}", attack=f"a{i}")], directory)


def test_concurrent_writers_lose_no_row(tmp_path):
    with mp.get_context("spawn").Pool(4) as pool:
        pool.map(_writer, [(str(tmp_path), w) for w in range(4)])
    board = pd.read_csv(tmp_path / "toy.csv")
    assert len(board) == 20
    summary = pd.read_csv(tmp_path / "summary-toy.csv")
    assert sorted(summary["defense"]) == ["d0", "d1", "d2", "d3"]
    assert not list(tmp_path.glob("*.tmp"))


def test_summary_separates_seen_and_unseen(tmp_path):
    rows = [clean_row("ddid"), make_row("ddid", "fna", "seen", 30.0), make_row("ddid", "ifgsm", "unseen", 12.0),
            make_row("ddid", "odfa", "unseen", 20.0)]
    write_leaderboards(rows, tmp_path)
    s = pd.read_csv(tmp_path / "summary-toy.csv").iloc[0]
    assert s["seen_mAP_mean"] == 30.0 and s["unseen_mAP_mean"] == 16.0 and s["unseen_mAP_worst"] == 12.0
    assert s["robust_mAP_worst"] == 12.0 and s["worst_attack"] == "ifgsm" and s["clean_mAP"] == 60.0


def test_board_figures_draw_sweeps_per_attack_and_variants_apart(tmp_path):
    from benchmark.report import board_figures as figures
    from benchmark.report.plots import plot_variants, save_figure

    rows = []
    for defense in ("none", "ddid", "ddid[ablate=fnes]"):
        rows.append({"defense": defense, "attack": "clean", "eps": "0", "eps_value": 0.0, "seen": "clean",
                     "mAP": 60.0, "suite": "", "run_id": defense})
        for eps in ((2, 8) if defense == "none" else (8,)):
            rows.append({"defense": defense, "attack": "fna", "eps": f"{eps}/255", "eps_value": eps / 255,
                         "seen": "unseen", "mAP": 40.0 - eps, "suite": "", "run_id": defense})
            for attack in ("standard-v1", "worst-case"):  # the suite's robustness curve; not the run's aggregate
                rows.append({"defense": defense, "attack": attack, "eps": f"{eps}/255", "eps_value": eps / 255,
                             "seen": "worst-case", "mAP": 10.0 - eps, "suite": "standard-v1", "run_id": defense})
    board = pd.DataFrame(rows)
    _, pairs = figures.swept(board)
    assert sorted(pairs.index) == [("fna", "none"), ("standard-v1", "none")]
    summary = pd.DataFrame([{"defense": d, "worst_case_mAP": 5.0, "clean_mAP": 60.0, "seed": 0, "run_id": d}
                            for d in ("none", "ddid")])
    assert [p.name for p in figures.eps_curves(board, "d", tmp_path / "d-eps-curves", save_figure)] == \
        ["d-eps-curves.png", "d-eps-curves.pdf"]
    assert [p.name for p in plot_variants(board, "d", tmp_path)] == ["d-ddid-variants.png", "d-ddid-variants.pdf"]
    assert (tmp_path / "d-heatmap.png") in figures.heatmap(board, summary, "d", tmp_path / "d-heatmap", save_figure)
    assert (tmp_path / "d-cvw.png") in figures.clean_vs_worst_case(summary, "d", tmp_path / "d-cvw", save_figure)
    assert figures.iteration_curves(summary, "d", tmp_path / "d-iter", save_figure) == []  # no convergence check
    checked = summary.assign(worst_case_mAP_2x=[4.8, 4.9], suite="standard-v1")
    assert (tmp_path / "d-iter.png") in figures.iteration_curves(checked, "d", tmp_path / "d-iter", save_figure)
    # a board without any swept (defense, attack) pair has no epsilon figure
    assert figures.eps_curves(board[board["defense"] != "none"], "e", tmp_path / "e", save_figure) == []


def test_the_eps_figure_legend_names_every_defense_whichever_panel_it_is_on(tmp_path):
    from benchmark.report import board_figures as figures

    rows = [{"defense": d, "attack": "clean", "eps": "0", "eps_value": 0.0, "seen": "clean", "mAP": 60.0,
             "suite": "", "run_id": d, "checkpoint": d} for d in ("ddid", "none")]
    rows += [{"defense": d, "attack": a, "eps": f"{e}/255", "eps_value": e / 255, "seen": "unseen", "mAP": 9.0 - e,
              "suite": "standard-v2" if a == "standard-v2" else "", "run_id": d, "checkpoint": d}
             for d, a in (("ddid", "standard-v2"), ("none", "fna")) for e in (2, 8)]
    labels: list[str] = []

    def record(fig, stem):
        labels.extend(text.get_text() for text in fig.legends[0].get_texts())
        fig.clf()
        return []

    figures.eps_curves(pd.DataFrame(rows), "d", tmp_path / "d", record)
    assert labels == ["ddid", "none"]


def test_a_curves_clean_point_comes_from_the_checkpoints_of_its_other_points():
    from benchmark.report.board_figures import _clean_of

    board = pd.DataFrame([{"defense": "none", "seen": "clean", "mAP": m, "checkpoint": c}
                          for m, c in ((60.0, "s0"), (70.0, "s1"), (80.0, "s2"))]
                         + [{"defense": "none", "seen": "worst-case", "mAP": 1.0, "checkpoint": "s1"}])
    assert list(_clean_of(board, board[board["seen"] == "worst-case"])["mAP"]) == [70.0]
    legacy = board.assign(checkpoint="")  # rows before checkpoints were recorded: every clean row of the defense
    assert len(_clean_of(legacy, legacy[legacy["seen"] == "worst-case"])) == 3


def test_heatmap_rows_name_their_seeds_when_seed_sets_differ():
    from benchmark.report.board_figures import seed_labels

    mixed = pd.DataFrame({"defense": ["ddid"] * 3 + ["metric-at"] * 2 + ["none"],
                          "seed": [0, 1, 2, 0, 2, 0]})
    assert seed_labels(mixed) == {"ddid": "ddid (seeds 0-2)", "metric-at": "metric-at (seeds 0,2)",
                                  "none": "none (seed 0)"}
    same = pd.DataFrame({"defense": ["ddid", "ddid", "none", "none"], "seed": [0, 1, 0, 1]})
    assert seed_labels(same) == {"ddid": "ddid", "none": "none"}


def test_spread_labels_keeps_the_gap_and_stays_near():
    from benchmark.report.board_figures import spread_labels

    values = [1.0, 1.02, 1.01, 5.0, 0.99]
    placed = spread_labels(values, 0.5)
    ordered = sorted(placed)
    assert all(b - a >= 0.5 - 1e-9 for a, b in zip(ordered, ordered[1:], strict=False))
    assert abs(placed[3] - 5.0) < 1e-9  # a label with room stays at its point
    assert [values[i] for i in sorted(range(5), key=lambda i: placed[i])] == sorted(values)  # order kept


def test_defense_styles_are_stable_and_distinct():
    from benchmark.report.board_figures import defense_styles

    styles = defense_styles(["none", "ddid", "goat", "jpeg"])
    assert styles == defense_styles(["jpeg", "goat", "ddid", "none", "ddid"])
    assert len({s["color"] for s in styles.values()}) == 4


def test_a_sweep_never_replaces_the_suite_worst_case(tmp_path):
    """An ε sweep over three attacks writes a narrower worst case under the same key: the suite's one stays."""
    full = dataclasses.replace(make_row("ddid", "worst-case", "worst-case", 4.2), suite="standard-v1")
    write_leaderboards([clean_row("ddid"), full], tmp_path)
    narrow = make_row("ddid", "worst-case", "worst-case", 14.1)
    write_leaderboards([clean_row("ddid"), narrow, make_row("ddid", "fna", "unseen", 20.0)], tmp_path)
    board = pd.read_csv(tmp_path / "toy.csv")
    worst = board[board["attack"] == "worst-case"]
    assert list(worst["mAP"]) == [4.2] and list(worst["suite"]) == ["standard-v1"]
    assert 20.0 in set(board.loc[board["attack"] == "fna", "mAP"])
    rerun = dataclasses.replace(full, mAP=4.0)  # a later suite run does replace it
    write_leaderboards([clean_row("ddid"), rerun], tmp_path)
    assert list(pd.read_csv(tmp_path / "toy.csv").query("attack == 'worst-case'")["mAP"]) == [4.0]


def _trained(row, checkpoint, when):
    return dataclasses.replace(row, checkpoint=checkpoint, train_date=when, run_id=f"run-{checkpoint}")


def test_a_new_training_of_a_model_supersedes_every_row_of_the_old_one(tmp_path):
    """Changed defaults keep the label: the old checkpoint's rows (even of attacks the new run skipped) go."""
    old = [_trained(r, "aaa", "2026-01-01T00:00:00Z") for r in
           (clean_row("metric-at"), make_row("metric-at", "fna", mAP=30.0), make_row("metric-at", "sma", mAP=40.0))]
    other_seed = _trained(make_row("metric-at", "fna", mAP=33.0, seed=1), "ccc", "2026-01-01T00:00:00Z")
    legacy = make_row("none", "fna", mAP=1.0)  # no checkpoint recorded: left alone
    write_leaderboards([*old, other_seed, legacy], tmp_path)
    new = [_trained(r, "bbb", "2026-02-01T00:00:00Z") for r in (clean_row("metric-at"),
                                                                 make_row("metric-at", "fna", mAP=25.0))]
    write_leaderboards(new, tmp_path)
    board = pd.read_csv(tmp_path / "toy.csv", dtype={"checkpoint": str})
    seed0 = board[(board["defense"] == "metric-at") & (board["seed"] == 0)]
    assert set(seed0["checkpoint"]) == {"bbb"} and set(seed0["attack"]) == {"clean", "fna"}
    assert board.loc[board["seed"] == 1, "mAP"].tolist() == [33.0]
    assert board.loc[board["defense"] == "none", "mAP"].tolist() == [1.0]
    summary = pd.read_csv(tmp_path / "summary-toy.csv")
    assert summary.loc[(summary["defense"] == "metric-at") & (summary["seed"] == 0), "checkpoint"].tolist() == ["bbb"]


def test_an_older_training_never_overwrites_a_newer_one(tmp_path):
    """Merging a run made earlier elsewhere (an older checkpoint of the same model) leaves the board as it was."""
    newer = [_trained(r, "bbb", "2026-02-01T00:00:00Z") for r in (clean_row("ddid"), make_row("ddid", "fna", mAP=25.0))]
    write_leaderboards(newer, tmp_path)
    older = [_trained(r, "aaa", "2026-01-01T00:00:00Z") for r in (clean_row("ddid"), make_row("ddid", "fna", mAP=9.0),
                                                                   make_row("ddid", "sma", mAP=9.0))]
    write_leaderboards(older, tmp_path)
    board = pd.read_csv(tmp_path / "toy.csv")
    assert set(board["checkpoint"]) == {"bbb"} and board.loc[board["attack"] == "fna", "mAP"].tolist() == [25.0]
    assert "sma" not in set(board["attack"])


def test_a_new_key_with_the_same_model_digest_keeps_the_models_rows(tmp_path):
    """Training code changed without changing the model (same weights and forward, so the same digest): the new
    key's rows join the published ones instead of superseding them; a different digest still supersedes."""
    from benchmark.report.boards import SUMMARY_TEXT, read_board, rows_of_model, training_identity

    old = [dataclasses.replace(_trained(r, "aaa", "2026-01-01T00:00:00Z"), model_digest="d1")
           for r in (clean_row("ddid"), make_row("ddid", "fna", mAP=30.0), make_row("ddid", "sma", mAP=40.0))]
    write_leaderboards(old, tmp_path)
    same = [dataclasses.replace(_trained(r, "bbb", "2026-02-01T00:00:00Z"), model_digest="d1")
            for r in (clean_row("ddid"), make_row("ddid", "tma", mAP=20.0))]
    write_leaderboards(same, tmp_path)
    board = read_board(tmp_path / "toy.csv")
    assert set(board["attack"]) == {"clean", "fna", "sma", "tma"}
    assert set(training_identity(board)) == {"model:d1"}
    summary = read_board(tmp_path / "summary-toy.csv", SUMMARY_TEXT)
    assert len(rows_of_model(board, summary.iloc[0])) == 4  # the summary's run and the earlier one: one model
    other = [dataclasses.replace(_trained(r, "ccc", "2026-03-01T00:00:00Z"), model_digest="d2")
             for r in (clean_row("ddid"), make_row("ddid", "fna", mAP=25.0))]
    write_leaderboards(other, tmp_path)
    board = pd.read_csv(tmp_path / "toy.csv", dtype=str)
    assert set(board["attack"]) == {"clean", "fna"} and set(board["checkpoint"]) == {"ccc"}


def test_training_identity_spreads_a_digest_to_rows_of_its_key_and_leaves_legacy_rows_alone():
    from benchmark.report.boards import training_identity

    frame = pd.DataFrame({"checkpoint": ["k1", "k1", "k2", "", "", "k3"],
                          "model_digest": ["", "d", "d", "", "e", float("nan")]})
    assert list(training_identity(frame)) == ["model:d", "model:d", "model:d", "", "model:e", "k3"]
    assert list(training_identity(pd.DataFrame({"checkpoint": ["k1", ""]}))) == ["k1", ""]


def test_one_suite_per_table_a_new_suite_takes_over_only_when_every_recipe_has_it():
    from benchmark.report.boards import headline_rows

    def frame(have):
        return pd.DataFrame([{"dataset": "toy", "train_dataset": "toy", "defense": d, "backbone": "b", "settings": "",
                              "suite": s} for d, suites in have.items() for s in suites]
                            + [{"dataset": "toy", "train_dataset": "toy", "defense": "old", "backbone": "b",
                                "settings": "", "suite": ""}])

    def shown(have, headline):
        rows = headline_rows(frame(have), suite=headline)
        return sorted(zip(rows["defense"], rows["suite"], strict=True))

    v12 = ["standard-v1", "standard-v2"]
    # the headline suite on every recipe: it is shown; missing on one recipe: the suite they all have
    assert shown({"a": v12, "b": v12}, "standard-v2") == [("a", "standard-v2"), ("b", "standard-v2"), ("old", "")]
    assert shown({"a": v12, "b": ["standard-v1"]}, "standard-v2") == [("a", "standard-v1"), ("b", "standard-v1"),
                                                                    ("old", "")]
    # the headline on none but a newer suite on all: the newest common one
    assert shown({"a": v12, "b": v12}, "standard-v0") == [("a", "standard-v2"), ("b", "standard-v2"), ("old", "")]
    # nothing in common: each recipe its own headline, else its newest
    assert shown({"a": ["standard-v2"], "b": ["standard-v1"]}, "standard-v1") == [("a", "standard-v2"),
                                                                                 ("b", "standard-v1"), ("old", "")]
    # a suite covers a recipe only when it covers each of its seeds: v2 on seed 1 alone does not take over
    seeds = pd.DataFrame([{"dataset": "toy", "train_dataset": "toy", "defense": d, "backbone": "b", "settings": "",
                           "seed": seed, "suite": suite} for d in ("a", "b") for seed in (0, 1)
                          for suite in ("standard-v1", "standard-v2") if not (d == "b" and seed == 0
                                                                             and suite == "standard-v2")])
    rows = headline_rows(seeds, suite="standard-v2")
    assert set(rows["suite"]) == {"standard-v1"} and len(rows) == 4
    board = pd.DataFrame([{"dataset": "toy", "train_dataset": "toy", "defense": "a", "backbone": "b", "settings": "",
                           "seeds": seeds_, "suite": suite} for suite, seeds_ in (("standard-v1", "0,1,2"),
                                                                                 ("standard-v2", "1,2"))])
    assert headline_rows(board, suite="standard-v2")["suite"].tolist() == ["standard-v1"]  # the seeds board's form


def _suite_run(suite, worst, run_id, seed=0):
    rows = [clean_row("ddid", seed), make_row("ddid", "fna", "unseen", 30.0, seed=seed),
            make_row("ddid", suite or "worst-case", "worst-case", worst, seed=seed)]
    return [dataclasses.replace(r, suite=suite, run_id=run_id) for r in rows]


def test_the_summary_keeps_one_row_per_suite_and_shows_the_headline_suite(tmp_path):
    """standard-v2 (the headline) is published beside standard-v1: neither replaces the other, a run without a
    suite replaces neither, and tables, pages and the seeds board show one suite per recipe, never a mix: v2 only
    once it covers every seed of the recipe (PKU's seeds have only v1 so far), else v1."""
    from attacks.suites import PUBLISHED_SUITES, SUITES
    from benchmark.core.protocol import HEADLINE_SUITE
    from benchmark.report.boards import headline_rows, read_summary
    from benchmark.report.tables import summary_frame

    assert HEADLINE_SUITE == "standard-v3" and HEADLINE_SUITE in PUBLISHED_SUITES and HEADLINE_SUITE in SUITES
    write_leaderboards(_suite_run("", 20.0, "no-suite"), tmp_path)  # an early run with single attacks only
    write_leaderboards(_suite_run("standard-v1", 10.0, "v1"), tmp_path)
    write_leaderboards(_suite_run("standard-v1", 12.0, "v1-seed1", seed=1), tmp_path)
    write_leaderboards(_suite_run("standard-v2", 7.0, "v2"), tmp_path)
    write_leaderboards(_suite_run("", 25.0, "later-no-suite"), tmp_path)
    summary = pd.read_csv(tmp_path / "summary-toy.csv", keep_default_na=False)
    pairs = sorted(zip(summary["seed"], summary["suite"], summary["worst_case_mAP"], strict=True))
    assert pairs == [(0, "standard-v1", 10.0), (0, "standard-v2", 7.0), (1, "standard-v1", 12.0)]
    # v2 lacks seed 1: the headline suite does not cover the recipe, so v1 (which does) is on view for both seeds
    assert sorted(headline_rows(read_summary(tmp_path / "summary-toy.csv"))[["seed", "suite"]].values.tolist()) \
        == [[0, "standard-v1"], [1, "standard-v1"]]
    assert sorted(summary_frame(tmp_path, "toy")["worst case mAP / R1"]) == ["10.0 / 10.0", "12.0 / 12.0"]
    # seed 1 gets v2: v2 covers the recipe's models and is on view (both seeds), and no mean mixes the suites
    write_leaderboards(_suite_run("standard-v2", 5.0, "v2-seed1", seed=1), tmp_path)
    seeds = pd.read_csv(tmp_path / "seeds-toy.csv", keep_default_na=False).set_index("suite")
    assert seeds.loc["standard-v2", "n"] == 2 and seeds.loc["standard-v1", "n"] == 2
    assert headline_rows(seeds.reset_index()).suite.tolist() == ["standard-v2"]
    assert sorted(headline_rows(read_summary(tmp_path / "summary-toy.csv"))[["seed", "suite"]].values.tolist()) \
        == [[0, "standard-v2"], [1, "standard-v2"]]
    assert sorted(summary_frame(tmp_path, "toy")["worst case mAP / R1"]) == ["5.0 / 5.0", "7.0 / 7.0"]
    summary = pd.read_csv(tmp_path / "summary-toy.csv", keep_default_na=False)
    assert headline_rows(summary.assign(suite=["standard-v1"] * 4, defense=["a", "b", "c", "d"]))["defense"] \
        .tolist() == ["a", "b", "c", "d"]  # a recipe without the headline suite shows its newest
    from benchmark.report.tables import suites_frame

    both = suites_frame(tmp_path, "toy")  # each seed has both suites: the newer one's difference from the first
    assert sorted(both.to_dict("records"), key=lambda r: r["seed"]) == [
        {"defense": "ddid", "seed": "0", "standard-v1 worst case mAP": "10.0", "standard-v2 worst case mAP": "7.0",
         "standard-v2 - standard-v1": -3.0},
        {"defense": "ddid", "seed": "1", "standard-v1 worst case mAP": "12.0", "standard-v2 worst case mAP": "5.0",
         "standard-v2 - standard-v1": -7.0}]


def test_the_heatmap_shows_a_runs_worst_case_only_where_its_suite_is_on_view(tmp_path):
    """A v1 run's worst case over its attacks (8.8) would stand beside, and above, the v2 worst case (6.9)."""
    from benchmark.report import board_figures as figures

    rows = [{"defense": "ddid", "attack": a, "eps": e, "seen": seen, "mAP": m, "suite": suite, "run_id": run}
            for a, e, seen, m, suite, run in (("clean", "0", "clean", 60.0, "standard-v1", "v1"),
                                              ("fna", "8/255", "unseen", 35.0, "standard-v1", "v1"),
                                              ("standard-v1", "8/255", "worst-case", 8.8, "standard-v1", "v1"),
                                              ("worst-case", "8/255", "worst-case", 8.8, "standard-v1", "v1"),
                                              ("standard-v2", "8/255", "worst-case", 6.9, "standard-v2", "v2"))]
    board = pd.DataFrame(rows)
    columns: list[list[str]] = []

    def record(fig, stem):
        columns.append([t.get_text() for t in fig.axes[0].get_xticklabels()])
        fig.clf()
        return []

    for suite in ("standard-v2", "standard-v1"):
        summary = pd.DataFrame([{"defense": "ddid", "worst_case_mAP": 6.9, "suite": suite, "seed": 0}])
        figures.heatmap(board, summary, "d", tmp_path / "d", record)
    assert columns == [["clean", "fna", "standard-v1", "standard-v2"],
                       ["clean", "fna", "standard-v1", "standard-v2", "worst-case"]]


def test_standard_recipes_and_variants_choose_their_suite_apart():
    """A v1-only ablation variant must not hold the standard recipes on v1 (tables, figures, site)."""
    from benchmark.report.boards import summary_on_view

    frame = pd.DataFrame([{"dataset": "toy", "train_dataset": "toy", "defense": d, "backbone": "b", "settings": "",
                           "seed": 0, "suite": s, "run_id": f"{d}-{s}", "attacks": 0}
                          for d, s in (("ddid", "standard-v1"), ("ddid", "standard-v2"), ("none", "standard-v1"),
                                       ("none", "standard-v2"), ("ddid[ablate=fnes]", "standard-v1"))])
    shown = summary_on_view(frame)
    assert shown["run_id"].tolist() == ["ddid-standard-v2", "none-standard-v2", "ddid[ablate=fnes]-standard-v1"]
