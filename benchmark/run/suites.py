"""Running a versioned suite (AutoAttack style) and the per-query worst cases of a run.

Members run in order, each only on the queries whose worst AP so far is above the suite's floor;
a white-box member runs once per adaptive forward of the defense. Every member cell is validated
like any attack cell (threat model, model state) and cached, keyed by the queries it attacked, so
a killed suite resumes. `--check-convergence` reruns the iterative members with doubled
iterations on the queries the suite left unbroken and reports the change in worst-case mAP.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from attacks import ATTACKS
from attacks.suites import SUITES, Suite
from benchmark.core.enums import Knowledge, Seen, Side
from benchmark.core.hashing import fingerprint, tensor_digest
from benchmark.core.metrics import QueryScorer, RetrievalMetrics, evaluate_features, query_scores
from benchmark.run.cells import CellStore, attack_context, run_attack, scaled_options
from benchmark.run.checkpoints import embed
from benchmark.run.outcome import AttackResult, RunOutcome, eps_label
from benchmark.run.validity import check_adversarial
from benchmark.run.worstcase import gather_choice, worst_case_choice, worst_case_map

log = logging.getLogger("benchmark")


@dataclass
class WorstState:
    """Per query: the adversarial image with the lowest AP so far, its AP and rank-1 (fractions)."""
    images: torch.Tensor
    ap: torch.Tensor
    rank1: torch.Tensor

    def open_queries(self, floor: torch.Tensor) -> torch.Tensor:
        """Indices of scorable queries still above their floor."""
        return ((~torch.isnan(self.ap)) & (self.ap > floor)).nonzero().flatten()

    def offer(self, indices: torch.Tensor, images: torch.Tensor, ap: torch.Tensor, rank1: torch.Tensor) -> int:
        """Keep the new images of queries where they score lower; returns how many improved."""
        cur_ap, cur_r1 = self.ap[indices], self.rank1[indices]
        better = (ap < cur_ap) | ((ap == cur_ap) & (rank1 < cur_r1))
        chosen = indices[better]
        self.images[chosen], self.ap[chosen], self.rank1[chosen] = images[better], ap[better], rank1[better]
        return int(better.sum())


def _member_options(name: str, eps: float, member_options: dict[str, Any], suite: Suite) -> dict[str, Any]:
    options = dict(member_options)
    if ATTACKS.get(name).has_option("floor"):
        options["floor"] = suite.floor
        if suite.floor_above_lowest:
            options["floor_above_lowest"] = True
    return scaled_options(name, eps, options)


def query_floors(suite: Suite, outcome: RunOutcome) -> torch.Tensor:
    """Per query, the AP at or below which the suite stops attacking it (float64)."""
    ws = outcome.workspace
    floor = torch.full((len(ws.query.pids),), float(suite.floor), dtype=torch.float64)
    if suite.floor_above_lowest:
        scorer = QueryScorer(outcome.gallery_feats, ws.gallery.pids, ws.gallery.camids, outcome.spec.metric)
        floor += scorer.lowest_ap(ws.query.pids, ws.query.camids).nan_to_num(0.0)
    if outcome.stop_at is not None:
        floor = torch.maximum(floor, outcome.stop_at.to(floor.dtype))
    return floor


def run_suite(suite: Suite, eps: float, outcome: RunOutcome, cells: CellStore, clean_images: torch.Tensor,
              state: WorstState) -> tuple[list[dict[str, Any]], float]:
    """Run the suite's members on the still-open queries, updating `state`; returns member records and seconds."""
    spec, ws, deployed = outcome.spec, outcome.workspace, outcome.model
    device = next(deployed.parameters()).device
    records: list[dict[str, Any]] = []
    total = 0.0
    floor = query_floors(suite, outcome)
    for position, member in enumerate(suite.members):
        white = ATTACKS.get(member.attack).knowledge == Knowledge.WHITE_BOX
        for view in outcome.views if white else outcome.views[:1]:
            label = f"{member.attack}[{view.surrogate_name}]" if white and len(outcome.views) > 1 else member.attack
            named = dict(member.options)
            label += f" T={named['temperature']:g}" if "temperature" in named else ""
            label += " from worst" if named.get("start") == "given" else ""
            open_ = state.open_queries(floor)
            record: dict[str, Any] = {"member": label, "attack": member.attack, "forward": view.surrogate_name,
                                      "attacked": len(open_), "improved": 0, "seconds": 0.0, "from_cache": False}
            records.append(record)
            if not len(open_):
                continue
            options = _member_options(member.attack, eps, dict(member.options), suite)
            given = options.get("start") == "given"  # starts at the worst images so far: they belong to the key
            starts = {"starts": tensor_digest([state.images[open_]])} if given else {}
            key = cells.key(member.attack, eps, options, view.surrogate_name, suite=suite.name, position=position,
                            queries=fingerprint(open_.tolist()), **starts)
            cached = cells.load_checked(key, clean_images[open_], eps, member.attack, spec.norm)
            if cached is not None:
                adv, report, seconds = cached
            else:
                ctx = attack_context(spec, ws, outcome.query_feats, outcome.gallery_feats, device, member.attack)
                ctx.start_images = state.images.clone() if given else None
                adv, report, seconds = run_attack(member.attack, eps, view, ws, ctx, spec, clean_images, options,
                                                  open_)
                cells.save(key, adv, report, seconds)
            emb = embed(deployed, adv, spec, device)
            ap, r1 = query_scores(emb, outcome.gallery_feats, ws.query.pids[open_], ws.gallery.pids,
                                  ws.query.camids[open_], ws.gallery.camids, spec.metric)
            record.update(improved=state.offer(open_, adv, ap, r1), seconds=seconds, from_cache=cached is not None,
                          report=report)
            total += seconds
            broken = int(((~torch.isnan(state.ap)) & (state.ap <= floor)).sum())
            log.info("suite %s %-18s eps %-7s on %4d queries: %4d improved, %4d at or below the floor (%s)",
                     suite.name, label, eps_label(eps), len(open_), record["improved"], broken,
                     "from the cache" if cached is not None else f"{seconds:.1f} s")
    return records, total


def _metrics(outcome: RunOutcome, images: torch.Tensor) -> RetrievalMetrics:
    ws = outcome.workspace
    device = next(outcome.model.parameters()).device
    feats = embed(outcome.model, images, outcome.spec, device)
    return evaluate_features(feats, outcome.gallery_feats, ws.query.pids, ws.gallery.pids, ws.query.camids,
                             ws.gallery.camids, outcome.spec.metric)


def run_suites(outcome: RunOutcome, cells: CellStore, clean_images: torch.Tensor) -> list[AttackResult]:
    """The run's suite at every ε (plus the convergence check when asked): one worst-case result per ε."""
    suite = SUITES.get(outcome.spec.suite)
    out = []
    clean = outcome.clean
    for eps in outcome.spec.eps:
        state = WorstState(clean_images.clone(), clean.per_query_ap.clone(), clean.per_query_rank1.clone())
        start = time.perf_counter()
        records, seconds = run_suite(suite, eps, outcome, cells, clean_images, state)
        check_adversarial(state.images, clean_images, eps, suite.name, outcome.spec.norm)
        metrics = _metrics(outcome, state.images)
        images = state.images.clone()
        report: dict[str, Any] = {"suite": suite.name, "floor": suite.floor, "members": records}
        if outcome.spec.check_convergence:
            doubled = suite.doubled()
            records2, seconds2 = run_suite(doubled, eps, outcome, cells, clean_images, state)
            metrics2 = _metrics(outcome, state.images)
            report["convergence"] = {"suite": doubled.name, "mAP": metrics2.mAP, "R1": metrics2.rank1,
                                     "delta": metrics2.mAP - metrics.mAP, "members": records2, "seconds": seconds2}
            log.info("convergence check %s eps %s: worst-case mAP %.2f -> %.2f with doubled iterations",
                     suite.name, eps_label(eps), metrics.mAP, metrics2.mAP)
        log.info("suite %s eps %s: per-query worst-case mAP %.2f R1 %.2f (%.0f s of attacks, %.0f s wall)",
                 suite.name, eps_label(eps), metrics.mAP, metrics.rank1, seconds, time.perf_counter() - start)
        out.append(AttackResult(suite.name, eps, metrics, Seen.WORST_CASE, seconds, report, images,
                                resumed=all(r["from_cache"] or not r["attacked"] for r in records)))
    return out


def run_worst_cases(outcome: RunOutcome) -> list[AttackResult]:
    """Per ε, the per-query worst case over the clean queries, every query-side attack and the suite.

    Only where the run has two or more such attacks (with one, it is that attack's own result or better).
    """
    out = []
    clean = outcome.clean
    clean_images = outcome.workspace.query.float_images()
    for eps in sorted({r.eps for r in outcome.attacks + outcome.aggregates}):
        sources = [r for r in outcome.attacks if r.eps == eps and ATTACKS.get(r.attack).side == Side.QUERY]
        sources += [r for r in outcome.aggregates if r.eps == eps]
        if len(sources) < 2:
            continue
        names = ["clean", *(r.attack for r in sources)]
        ap = torch.stack([clean.per_query_ap, *(r.metrics.per_query_ap for r in sources)])
        r1 = torch.stack([clean.per_query_rank1, *(r.metrics.per_query_rank1 for r in sources)])
        choice = worst_case_choice(ap, r1)
        images = gather_choice([clean_images, *(r.adversarial for r in sources)], choice)
        check_adversarial(images, clean_images, eps, Seen.WORST_CASE.value, outcome.spec.norm)
        metrics = _metrics(outcome, images)
        expected = worst_case_map(ap)
        if not math.isclose(metrics.mAP, expected, abs_tol=1e-3):
            log.warning("worst case at %s: re-scored mAP %.4f differs from the per-query minimum %.4f (a randomised "
                        "defense?)", eps_label(eps), metrics.mAP, expected)
        counts = torch.bincount(choice, minlength=len(names)).tolist()
        report = {"sources": names, "chosen": dict(zip(names, counts, strict=True))}
        out.append(AttackResult(Seen.WORST_CASE.value, eps, metrics, Seen.WORST_CASE, sum(r.seconds for r in sources),
                                report,
                                images, resumed=all(r.resumed for r in sources)))
    return out
