"""The standard suite: attack-list parsing, a run with per-query records, resume, and the new sanity flags."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from attacks import ATTACKS
from attacks.suites import DEFAULT_SUITE, SUITES
from benchmark.core.enums import Seen
from benchmark.core.errors import BenchmarkError
from benchmark.core.metrics import RetrievalMetrics
from benchmark.report.runs import write_run
from benchmark.run.execute import execute
from benchmark.run.outcome import AttackResult
from benchmark.run.sanity import attack_raises_map, black_box_stronger, not_converged
from benchmark.run.spec import split_attacks
from tests.conftest import cpu_runtime, tiny_config


def test_all_means_every_attack_outside_suites_plus_the_standard_suite():
    names, suite = split_attacks("all")
    assert suite == DEFAULT_SUITE == "standard-v3"
    assert not any(n.startswith("apgd-") for n in names) and "fna" in names and "transfer" in names
    assert split_attacks("standard") == ([], "standard-v3")  # the alias follows the headline suite
    assert split_attacks("standard-v1") == ([], "standard-v1")
    assert split_attacks("standard-v2") == ([], "standard-v2")
    assert split_attacks("fna,standard-v1") == (["fna"], "standard-v1")
    assert split_attacks("apgd-*") == (sorted(ATTACKS.names("apgd-*")), None)
    assert split_attacks("none") == ([], None)


def test_suite_is_versioned_and_fixed():
    suite = SUITES.get("standard-v1")
    assert [m.attack for m in suite.members] == ["apgd-ce", "apgd-margin", "apgd-fna", "apgd-sma", "apgd-ifgsm",
                                                 "query-bb"]
    assert suite.floor == 0.01 and dict(suite.members[-1].options) == {"queries": 500}
    doubled = suite.doubled()
    assert all(dict(m.options)["steps"] == 200 for m in doubled.members) and len(doubled.members) == 5


def test_convergence_check_needs_a_suite():
    with pytest.raises(BenchmarkError, match="--check-convergence"):
        tiny_config(attacks="fna", check_convergence=True)


@pytest.mark.slow
def test_standard_suite_run_records_per_query_worst_case_and_resumes(tiny_ws, tmp_path):
    cfg = tiny_config(defense="none", attacks="fna,sma,standard-v1", epochs=2, check_convergence=True)
    outcome = execute(cfg, cpu_runtime(), workspace=tiny_ws)
    by_name = {r.attack: r for r in outcome.aggregates}
    assert set(by_name) == {"standard-v1", "worst-case"}
    suite = by_name["standard-v1"]
    assert suite.seen is Seen.WORST_CASE and suite.report["convergence"]["mAP"] <= suite.metrics.mAP + 1e-6
    members = [m["member"] for m in suite.report["members"]]
    assert members == ["apgd-ce", "apgd-margin", "apgd-fna", "apgd-sma", "apgd-ifgsm", "query-bb"]
    attacked = [m["attacked"] for m in suite.report["members"]]
    assert attacked == sorted(attacked, reverse=True), "later members must only see queries still above the floor"
    # the suite never scores above clean, and the run's worst case is at most every source
    assert suite.metrics.mAP <= outcome.clean.mAP + 1e-6
    worst = by_name["worst-case"].metrics.mAP
    assert worst <= min([suite.metrics.mAP] + [r.metrics.mAP for r in outcome.attacks]) + 1e-6
    paths = write_run(outcome, tmp_path / "results", tmp_path / "boards")
    table = pd.read_csv(paths["run folder"] / "per_query.csv")
    ap_cols = [c for c in table if c.endswith("_ap") and not c.startswith(("worst-case", "standard-v1"))]
    expected = table[ap_cols + ["standard-v1@8/255_ap"]].min(axis=1)
    assert (table["worst-case@8/255_ap"] - expected).abs().max() < 1e-6
    summary = pd.read_csv(tmp_path / "boards" / "custom" / "summary-synthped.csv")
    assert summary.loc[0, "suite"] == "standard-v1"
    assert summary.loc[0, "worst_case_mAP"] == pytest.approx(suite.metrics.mAP, abs=1e-3)
    assert summary.loc[0, "worst_case_mAP_2x"] == pytest.approx(suite.report["convergence"]["mAP"], abs=1e-3)
    again = execute(cfg, cpu_runtime(), workspace=tiny_ws)
    assert all(r.resumed for r in again.aggregates), "suite members must come from the cache on a rerun"
    assert again.aggregates[0].metrics.mAP == suite.metrics.mAP


def _result(attack: str, mAP: float, eps: float = 8 / 255, seen: Seen = Seen.UNSEEN, report=None) -> AttackResult:
    metrics = RetrievalMetrics(mAP, 0.0, 0.0, 0.0, 0.0, 1, torch.zeros(1), torch.zeros(1))
    return AttackResult(attack, eps, metrics, seen, 0.0, report or {}, torch.zeros(1, 3, 4, 4))


class _Outcome:
    def __init__(self, attacks, aggregates=(), clean=50.0, suite="standard-v1"):
        self.attacks, self.aggregates = list(attacks), list(aggregates)
        self.clean = _result("clean", clean).metrics
        self.spec = type("S", (), {"suite": suite})()


def test_blackbox_stronger_compares_within_an_objective():
    # Square (self-distance) beats sma but not fna: only the same-objective comparison may fire
    flags = black_box_stronger([_result("fna", 5.0), _result("sma", 40.0), _result("query-bb", 30.0)])
    assert [f.code for f in flags] == ["blackbox-stronger:query-bb"]
    assert black_box_stronger([_result("sma", 20.0), _result("query-bb", 30.0)]) == []


def test_new_flags_fire_on_their_cases_only():
    raised = _Outcome([_result("fna", 55.0), _result("sma", 20.0)])
    assert [f.code for f in attack_raises_map(raised)] == ["attack-raises-map:fna"]
    moved = _Outcome([], [_result("standard-v1", 10.0, seen=Seen.WORST_CASE,
                                  report={"convergence": {"mAP": 8.5, "delta": -1.5}})])
    assert [f.code for f in not_converged(moved)] == ["not-converged"]
    still = _Outcome([], [_result("standard-v1", 10.0, seen=Seen.WORST_CASE,
                                  report={"convergence": {"mAP": 9.5, "delta": -0.5}})])
    assert not_converged(still) == [] and not math.isnan(still.aggregates[0].metrics.mAP)


def test_standard_v2_counts_passes_and_stops_each_query_above_its_lowest_reachable_ap(tiny_ws):
    from benchmark.core.metrics import QueryScorer
    from benchmark.run.suites import query_floors

    cfg = tiny_config(defense="none", attacks="standard-v2", epochs=2, check_convergence=True)
    outcome = execute(cfg, cpu_runtime(), workspace=tiny_ws)
    (suite,) = outcome.aggregates
    records = suite.report["members"]
    check = [m["member"] for m in suite.report["convergence"]["members"]]
    assert check == ["apgd-sap", "apgd-ce", "apgd-margin", "apgd-fna", "apgd-sap from worst"]
    assert [m["member"] for m in records] == ["apgd-sap", "apgd-ce", "apgd-margin", "apgd-fna", "query-bb"]
    for m in records:
        if m["attacked"]:
            passes = m["report"]["passes_per_query"]
            assert passes["forward"] > 0
            if m["attack"] == "query-bb":
                assert passes["backward"] == 0
            else:  # one forward and one backward per iteration, at most 100 iterations + start per restart
                assert 0 < passes["backward"] <= passes["forward"] <= 2 * 101 * 2
    ws = outcome.workspace
    lowest = QueryScorer(outcome.gallery_feats, ws.gallery.pids, ws.gallery.camids).lowest_ap(ws.query.pids,
                                                                                                ws.query.camids)
    floors = query_floors(SUITES.get("standard-v2"), outcome)
    assert torch.allclose(floors, 0.01 + lowest.nan_to_num(0.0))
    assert (lowest.nan_to_num(0.0) > 0.001).any(), "some query has enough true matches to stay above 0"
    final = suite.metrics.per_query_ap
    attacked_last = records[-1]["attacked"]
    assert attacked_last <= int((final > floors).sum()) + records[-1]["improved"]


def test_standard_v3_sharpens_from_the_worst_images_and_stops_a_tenth_of_a_point_above_the_lowest(tiny_ws):
    from benchmark.core.metrics import QueryScorer
    from benchmark.run.suites import query_floors

    v3 = SUITES.get("standard-v3")
    assert [(m.attack, dict(m.options).get("temperature"), dict(m.options).get("start")) for m in v3.members[:3]] \
        == [("apgd-sap", None, None), ("apgd-sap", 0.01, "given"), ("apgd-sap", 0.002, "given")]
    # v2 exactly as the test above runs it, so its cells come from this session's cache
    runs = {name: execute(tiny_config(defense="none", attacks=name, epochs=2, check_convergence=name.endswith("2")),
                          cpu_runtime(), workspace=tiny_ws) for name in ("standard-v2", "standard-v3")}
    outcome = runs["standard-v3"]
    (suite,) = outcome.aggregates
    records = suite.report["members"]
    assert [m["member"] for m in records] == ["apgd-sap", "apgd-sap T=0.01 from worst", "apgd-sap T=0.002 from worst",
                                              "apgd-ce", "apgd-margin", "apgd-fna", "query-bb"]
    ws = outcome.workspace
    lowest = QueryScorer(outcome.gallery_feats, ws.gallery.pids, ws.gallery.camids).lowest_ap(ws.query.pids,
                                                                                                ws.query.camids)
    floors = query_floors(v3, outcome)
    assert torch.allclose(floors, 0.001 + lowest.nan_to_num(0.0))
    # the finer stop lets no query end higher than v2 left it by more than v2's own stop allows
    v2_ap = runs["standard-v2"].aggregates[0].metrics.per_query_ap
    v3_ap = suite.metrics.per_query_ap
    scored = ~torch.isnan(v3_ap)
    assert suite.metrics.mAP <= runs["standard-v2"].aggregates[0].metrics.mAP
    assert (v3_ap[scored] <= torch.maximum(v2_ap[scored], lowest[scored] + 0.01) + 1e-9).all()
