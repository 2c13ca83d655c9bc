"""Turn a run into files: `results/<run-id>/` (config, metrics, log, plots) and leaderboard rows."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attacks import ATTACKS
from attacks.base import AttackInfo
from benchmark.core.atomic import atomic_folder, atomic_write_text, ensure_writable
from benchmark.core.enums import Seen
from benchmark.core.errors import BenchmarkError
from benchmark.core.hashing import fingerprint
from benchmark.core.intervals import identity_bootstrap
from benchmark.core.metrics import RetrievalMetrics, pairwise_distance
from benchmark.core.protocol import WORST_CASE
from benchmark.core.provenance import provenance, tree_dirty
from benchmark.report.boards import LeaderboardRow, board_paths, per_query_column, write_leaderboards
from benchmark.run.checkpoints import embed
from benchmark.run.outcome import AttackResult, RunOutcome, eps_label, format_summary, format_table
from benchmark.run.sanity import Flag, format_flags
from benchmark.run.spec import RunSpec
from defenses import DEFENSES


def run_id(outcome: RunOutcome, prov: dict[str, Any]) -> str:
    """The run folder's name: time stamp plus the spec's readable parts and hash."""
    stamp = prov["date"].replace("-", "").replace(":", "").replace("T", "-").rstrip("Z")
    return outcome.spec.run_id(stamp)


def training_quality(history: dict[str, Any]) -> str:
    """A defense's training diagnostics (`history["quality"]`, numbers by name) as 'name=value;...'."""
    quality = history.get("quality") or {}
    return ";".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in quality.items())


def copy_training_artifacts(history: dict[str, Any], folder: Path) -> None:
    """Files a defense's training names in `history["artifacts"]` (name -> path), copied into the run folder.

    A checkpoint loaded from another cache may name files that are gone: those are skipped.
    """
    for name, source in (history.get("artifacts") or {}).items():
        if Path(source).is_file() and Path(name).name == name:
            shutil.copyfile(source, folder / name)


def intervals(metrics: RetrievalMetrics, identities: torch.Tensor) -> dict[str, float]:
    """95 % identity-bootstrap intervals of a row's mAP and rank-1 (percent)."""
    ids = identities.numpy()
    map_low, map_high = identity_bootstrap(metrics.per_query_ap.numpy() * 100, ids)
    r1_low, r1_high = identity_bootstrap(metrics.per_query_rank1.numpy() * 100, ids)
    return {"mAP_low": map_low, "mAP_high": map_high, "R1_low": r1_low, "R1_high": r1_high}


def build_rows(outcome: RunOutcome, flags: list[Flag], prov: dict[str, Any], rid: str,
               allow_dirty: bool = False) -> list[LeaderboardRow]:
    """Leaderboard rows of a run: the clean row, then one per (attack, ε) cell."""
    spec, clean = outcome.spec, outcome.clean
    pids = outcome.workspace.query.pids
    trained = outcome.train_info.provenance
    common = dict(attacked_with=outcome.attacked_with, suite=spec.suite or "",
                  clean_mAP=clean.mAP, clean_R1=clean.rank1, clean_id_ap_var=clean.id_ap_variance,
                  flags=";".join(f.code for f in flags),
                  train_seconds=float(outcome.train_info.train_seconds if outcome.train_info.train_seconds is not None
                                      else math.nan), run_id=rid,
                  package_version=prov["package_version"], torch_version=prov["torch_version"],
                  git_commit=prov["git_commit"], device=prov["device"], date=prov["date"], command=prov["command"],
                  **{k: prov[k] for k in ("cpu_model", "cpu_capability", "gpu", "cuda_version", "cudnn_version",
                                          "libraries")},
                  train_commit=str(trained.get("git_commit", "")),
                  train_date=str(trained.get("date", "")), checkpoint=outcome.train_info.checkpoint_key,
                  model_digest=outcome.train_info.model_digest,
                  data_digest=fingerprint(outcome.workspace.digests, 12), data_seed=str(spec.data_seed),
                  defense_dist=DEFENSES.meta(spec.defense.name).dist, allow_dirty=allow_dirty,
                  training_quality=training_quality(outcome.train_info.history))
    # the key columns come from the run specification, the one source of a result's identity
    rows = [LeaderboardRow(**spec.row_key("clean", "0"), eps_value=0.0, family="-", knowledge="-",
                           seen=Seen.CLEAN.value, mAP=clean.mAP, R1=clean.rank1, R5=clean.rank5, R10=clean.rank10,
                           mINP=clean.mINP, mAP_drop=0.0, id_ap_var=clean.id_ap_variance,
                           id_ap_worst10=clean.id_ap_worst_decile, num_queries=clean.num_queries,
                           attack_seconds=0.0, queries_per_image=math.nan, **intervals(clean, pids), **common)]
    for r in outcome.attacks + outcome.aggregates:
        meta, m = _row_meta(r), r.metrics
        convergence = r.report.get("convergence") or {}
        rows.append(LeaderboardRow(
            **spec.row_key(r.attack, eps_label(r.eps)), eps_value=r.eps, family=meta.family,
            knowledge=meta.knowledge, seen=r.seen.value, mAP=m.mAP, R1=m.rank1, R5=m.rank5, R10=m.rank10,
            mINP=m.mINP, mAP_drop=clean.mAP - m.mAP, id_ap_var=m.id_ap_variance,
            id_ap_worst10=m.id_ap_worst_decile, num_queries=m.num_queries, attack_seconds=r.seconds,
            queries_per_image=float(r.report.get("queries_per_image", math.nan)),
            attack_dist=meta.dist, forward=r.forward,
            mAP_2x=float(convergence.get("mAP", math.nan)), **intervals(m, pids), **common))
    return rows


def _row_meta(result: AttackResult) -> AttackInfo:
    """Registry metadata of an attack; for a per-query worst case, what it aggregates."""
    if result.seen is Seen.WORST_CASE:
        return AttackInfo(family=WORST_CASE, knowledge="mixed")
    return ATTACKS.meta(result.attack)


def per_query_table(outcome: RunOutcome) -> str:
    """CSV text of per-query AP and rank-1 (fractions): clean, every attack cell, suite members and worst cases.

    Worst cases and new aggregates can be recomputed from it without attacking again; a suite
    member's column is empty for the queries it skipped (already at or below the floor).
    """
    ws = outcome.workspace
    columns: dict[str, list[float]] = {"clean_ap": outcome.clean.per_query_ap.tolist(),
                                       "clean_r1": outcome.clean.per_query_rank1.tolist()}
    for r in outcome.attacks + outcome.aggregates:
        columns[per_query_column(r.attack, eps_label(r.eps))] = r.metrics.per_query_ap.tolist()
        columns[per_query_column(r.attack, eps_label(r.eps), "r1")] = r.metrics.per_query_rank1.tolist()
    lines = ["query,name,pid,camid," + ",".join(columns)]
    for q in range(len(ws.query)):
        values = ",".join("" if math.isnan(v[q]) else f"{v[q]:.6f}" for v in columns.values())
        lines.append(f"{q},{ws.dataset.query[q].path.name},{int(ws.query.pids[q])},{int(ws.query.camids[q])},{values}")
    return "\n".join(lines) + "\n"


def per_id_table(outcome: RunOutcome) -> str:
    """CSV text of per-identity AP, clean and per attack cell."""
    names = ["clean"] + [f"{r.attack}@{eps_label(r.eps)}" for r in outcome.attacks + outcome.aggregates]
    metrics = [outcome.clean] + [r.metrics for r in outcome.attacks + outcome.aggregates]
    lines = ["pid," + ",".join(names)]
    for pid in sorted(outcome.clean.per_id_ap):
        lines.append(f"{pid}," + ",".join(f"{m.per_id_ap.get(pid, math.nan):.4f}" for m in metrics))
    return "\n".join(lines) + "\n"


def ranking_record(outcome: RunOutcome, k: int = 5, n_queries: int = 6) -> dict[str, Any]:
    """Top-k gallery file names for a few queries, clean and under the strongest attack (or worst case)."""
    ws = outcome.workspace
    if not outcome.attacks + outcome.aggregates:
        return {}
    strongest = min(outcome.attacks + outcome.aggregates, key=lambda r: r.metrics.mAP)
    device = next(outcome.model.parameters()).device
    picks = torch.linspace(0, len(ws.query) - 1, n_queries).long()
    adv_feats = embed(outcome.model, strongest.adversarial[picks], outcome.spec, device)
    record: dict[str, Any] = {"attack": strongest.attack, "eps": eps_label(strongest.eps), "queries": []}
    valid = ws.gallery.pids != -1
    for row, qi in enumerate(picks.tolist()):
        entry = {"query": ws.dataset.query[qi].path.name, "pid": int(ws.query.pids[qi])}
        for label, feat in (("clean", outcome.query_feats[qi:qi + 1]), ("attacked", adv_feats[row:row + 1])):
            d = pairwise_distance(feat, outcome.gallery_feats, outcome.spec.metric)[0]
            same_cam = (ws.gallery.pids == ws.query.pids[qi]) & (ws.gallery.camids == ws.query.camids[qi])
            d[~valid | same_cam] = float("inf")
            top = torch.topk(-d, k).indices.tolist()
            entry[label] = [{"name": ws.dataset.gallery[g].path.name, "pid": int(ws.gallery.pids[g]),
                             "match": bool(ws.gallery.pids[g] == ws.query.pids[qi])} for g in top]
        record["queries"].append(entry)
    record["adversarial_index"] = picks.tolist()
    return record


def _suite_record(outcome: RunOutcome) -> dict[str, Any] | None:
    """The suite's definition as run: members with options, floor (versioned by name)."""
    if outcome.spec.suite is None:
        return None
    from attacks.suites import SUITES

    suite = SUITES.get(outcome.spec.suite)
    return {"name": suite.name, "floor": suite.floor, "floor_above_lowest": suite.floor_above_lowest,
            "restart_from_worst": suite.restart_from_worst,
            "summary": suite.summary,
            "members": [{"attack": m.attack, "options": dict(m.options)} for m in suite.members],
            "forwards": [v.surrogate_name for v in outcome.views]}


def write_run(outcome: RunOutcome, results_dir: str | Path, leaderboard_dir: str | Path,
              allow_dirty: bool = False) -> dict[str, Path]:
    """Write the run folder (atomically: complete or absent) and upsert the leaderboards; returns the paths."""
    device = next(outcome.model.parameters()).device
    prov = provenance(device, outcome.spec.seed)
    flags = outcome.flags
    rid = run_id(outcome, prov)
    rows = build_rows(outcome, flags, prov, rid, allow_dirty)
    config = {"spec": outcome.spec.to_json(), "defense_config": outcome.defense_config,
              "seen_attacks": list(outcome.defense.seen_attacks()),
              "attacked_with": outcome.attacked_with, "provenance": prov, "allow_dirty": allow_dirty,
              "suite": _suite_record(outcome),
              "checkpoint": outcome.train_info.checkpoint, "model_digest": outcome.train_info.model_digest,
              "training_provenance": outcome.train_info.provenance,
              "dataset": outcome.workspace.dataset.summary(), "data_digests": outcome.workspace.digests}
    metrics = {"clean": outcome.clean.as_dict(),
               "attacks": [{"attack": r.attack, "eps": eps_label(r.eps), "seen": r.seen.value, "seconds": r.seconds,
                            "from_cache": r.resumed, **r.metrics.as_dict(),
                            "forward": r.forward,
                            **{f"report_{k}": v for k, v in r.report.items()}} for r in outcome.attacks],
               "worst_cases": [{"attack": r.attack, "eps": eps_label(r.eps), "seconds": r.seconds,
                                **r.metrics.as_dict(), **r.report} for r in outcome.aggregates],
               "flags": [dataclasses.asdict(f) for f in flags],
               # per-epoch losses and seconds (and DDID's phase-1 manifest), from when the checkpoint was trained
               "training": {"train_seconds": outcome.train_info.train_seconds,
                            "loaded_from_cache": outcome.train_info.cached,
                            "history": outcome.train_info.history}}
    record = ranking_record(outcome)
    flag_lines = format_flags(flags)
    log = (f"{outcome.workspace.dataset.summary()}\n{prov['command']}\n\n{format_table(outcome)}\n\n"
           f"{format_summary(outcome)}\n\nattacked with: {outcome.attacked_with}\n{flag_lines}\n")
    folder = Path(results_dir) / rid
    with atomic_folder(folder) as tmp:
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=2, default=str))
        atomic_write_text(tmp / "metrics.json", json.dumps(metrics, indent=2, default=str))
        atomic_write_text(tmp / "per_id_ap.csv", per_id_table(outcome))
        atomic_write_text(tmp / "per_query.csv", per_query_table(outcome))
        atomic_write_text(tmp / "ranking.json", json.dumps(record, indent=2))
        atomic_write_text(tmp / "log.txt", log)
        copy_training_artifacts(outcome.train_info.history, tmp)
        from benchmark.report.plots import plot_run

        plot_run(outcome, record, tmp)
    paths: dict[str, Path] = {"run folder": folder}
    paths.update(write_leaderboards(rows, leaderboard_dir, official=outcome.spec.official))
    return paths


@dataclass(frozen=True)
class RunWriter:
    """The CLI's writer of a run (`execute(spec, runtime, write=RunWriter(...))`): run folder and board rows."""

    results_dir: str | Path
    leaderboard_dir: str | Path
    allow_dirty: bool = False

    def check(self, spec: RunSpec) -> None:
        """Before any work: official rows need a clean tree (or --allow-dirty, recorded in every row), and both
        destinations must take a file (a results folder left without its rows is found now, not after the run)."""
        if spec.official and not self.allow_dirty and tree_dirty():
            raise BenchmarkError("the code has uncommitted changes: official rows must come from a clean tree; "
                                 "commit first, or pass --allow-dirty (recorded in every row) or --no-write")
        ensure_writable(self.results_dir)
        ensure_writable(board_paths(self.leaderboard_dir, spec.data.name, spec.official)[0].parent)

    def __call__(self, outcome: RunOutcome) -> dict[str, Path]:
        """Write the run folder and upsert its rows; returns the paths by label."""
        return write_run(outcome, self.results_dir, self.leaderboard_dir, self.allow_dirty)

    def to_json(self) -> dict[str, Any]:
        """The writer as a sweep cell stores it."""
        return {"results_dir": str(self.results_dir), "leaderboard_dir": str(self.leaderboard_dir),
                "allow_dirty": self.allow_dirty}
