"""Turn a run into files: `results/<run-id>/` (config, metrics, log, plots) and leaderboard rows."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from attacks import ATTACKS
from benchmark.enums import Seen
from benchmark.harness import RunOutcome, eps_label, format_summary, format_table
from benchmark.leaderboard import LeaderboardRow, write_leaderboards
from benchmark.metrics import pairwise_distance
from benchmark.models import extract_embeddings
from benchmark.provenance import provenance
from benchmark.sanity import Flag, format_flags, sanity_flags
from benchmark.training import fingerprint

# defense labels such as "ddid[ablate=fnes+self-meta]" become folder-name safe "ddid-ablate-fnes-self-meta"
RUN_ID_SAFE = str.maketrans({"[": "-", "]": None, "=": "-", ",": "-", "+": "-", "/": "-"})


def run_id(outcome: RunOutcome, prov: dict[str, Any]) -> str:
    cfg = outcome.cfg
    stamp = prov["date"].replace("-", "").replace(":", "").replace("T", "-").rstrip("Z")
    digest = fingerprint({"cfg": dataclasses.asdict(cfg), "date": prov["date"]})[:6]
    label = cfg.defense_label().translate(RUN_ID_SAFE)
    return f"{stamp}-{cfg.dataset}-{label}-{cfg.backbone}-s{cfg.seed}-{digest}"


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def build_rows(outcome: RunOutcome, flags: list[Flag], prov: dict[str, Any], rid: str) -> list[LeaderboardRow]:
    cfg, clean = outcome.cfg, outcome.clean
    flag_text = ";".join(f.code for f in flags)
    common = dict(dataset=outcome.workspace.dataset.name, train_dataset=outcome.workspace.train_name,
                  defense=cfg.defense_label(), backbone=cfg.backbone, attacked_with=outcome.defense.attacked_with,
                  clean_mAP=clean.mAP, clean_R1=clean.rank1, clean_id_ap_var=clean.id_ap_variance, flags=flag_text,
                  train_seconds=float(outcome.train_info.get("train_seconds", math.nan)), run_id=rid,
                  seed=cfg.seed, package_version=prov["package_version"], torch_version=prov["torch_version"],
                  git_commit=prov["git_commit"], device=prov["device"], date=prov["date"], command=prov["command"])
    rows = [LeaderboardRow(attack="clean", eps="0", eps_value=0.0, family="-", knowledge="-",
                           seen=Seen.CLEAN.value, mAP=clean.mAP, R1=clean.rank1, R5=clean.rank5, R10=clean.rank10,
                           mINP=clean.mINP, mAP_drop=0.0, id_ap_var=clean.id_ap_variance,
                           id_ap_worst10=clean.id_ap_worst_decile, num_queries=clean.num_queries,
                           attack_seconds=0.0, queries_per_image=math.nan, **common)]
    for r in outcome.attacks:
        meta, m = ATTACKS.meta(r.attack), r.metrics
        rows.append(LeaderboardRow(
            attack=r.attack, eps=eps_label(r.eps), eps_value=r.eps, family=meta["family"],
            knowledge=meta["knowledge"], seen=r.seen.value, mAP=m.mAP, R1=m.rank1, R5=m.rank5, R10=m.rank10,
            mINP=m.mINP, mAP_drop=clean.mAP - m.mAP, id_ap_var=m.id_ap_variance,
            id_ap_worst10=m.id_ap_worst_decile, num_queries=m.num_queries, attack_seconds=r.seconds,
            queries_per_image=float(r.report.get("queries_per_image", math.nan)), **common))
    return rows


def per_id_table(outcome: RunOutcome) -> str:
    names = ["clean"] + [f"{r.attack}@{eps_label(r.eps)}" for r in outcome.attacks]
    metrics = [outcome.clean] + [r.metrics for r in outcome.attacks]
    lines = ["pid," + ",".join(names)]
    for pid in sorted(outcome.clean.per_id_ap):
        lines.append(f"{pid}," + ",".join(f"{m.per_id_ap.get(pid, math.nan):.4f}" for m in metrics))
    return "\n".join(lines) + "\n"


def ranking_record(outcome: RunOutcome, k: int = 5, n_queries: int = 6) -> dict[str, Any]:
    """Top-k gallery file names for a few queries, clean and under the strongest attack."""
    ws = outcome.workspace
    if not outcome.attacks:
        return {}
    strongest = min(outcome.attacks, key=lambda r: r.metrics.mAP)
    device = next(outcome.model.parameters()).device
    picks = torch.linspace(0, len(ws.query) - 1, n_queries).long()
    adv_feats = extract_embeddings(outcome.model, strongest.adversarial[picks], device=device)
    record: dict[str, Any] = {"attack": strongest.attack, "eps": eps_label(strongest.eps), "queries": []}
    valid = ws.gallery.pids != -1
    for row, qi in enumerate(picks.tolist()):
        entry = {"query": ws.dataset.query[qi].path.name, "pid": int(ws.query.pids[qi])}
        for label, feat in (("clean", outcome.query_feats[qi:qi + 1]), ("attacked", adv_feats[row:row + 1])):
            d = pairwise_distance(feat, outcome.gallery_feats, outcome.cfg.metric)[0]
            same_cam = (ws.gallery.pids == ws.query.pids[qi]) & (ws.gallery.camids == ws.query.camids[qi])
            d[~valid | same_cam] = float("inf")
            top = torch.topk(-d, k).indices.tolist()
            entry[label] = [{"name": ws.dataset.gallery[g].path.name, "pid": int(ws.gallery.pids[g]),
                             "match": bool(ws.gallery.pids[g] == ws.query.pids[qi])} for g in top]
        record["queries"].append(entry)
    record["adversarial_index"] = picks.tolist()
    return record


def write_run(outcome: RunOutcome, results_dir: str | Path, leaderboard_dir: str | Path) -> dict[str, Path]:
    """Write the run folder and upsert the leaderboards; returns the paths written."""
    device = next(outcome.model.parameters()).device
    prov = provenance(device, outcome.cfg.seed)
    flags = sanity_flags(outcome)
    rid = run_id(outcome, prov)
    folder = Path(results_dir) / rid
    folder.mkdir(parents=True, exist_ok=True)
    rows = build_rows(outcome, flags, prov, rid)
    cfg = dataclasses.asdict(outcome.cfg)
    config = {"run": cfg, "defense_config": outcome.defense.config(),
              "seen_attacks": list(outcome.defense.seen_attacks()),
              "attacked_with": outcome.defense.attacked_with, "provenance": prov,
              "checkpoint": outcome.train_info.get("checkpoint"), "dataset": outcome.workspace.dataset.summary()}
    metrics = {"clean": outcome.clean.as_dict(),
               "attacks": [{"attack": r.attack, "eps": eps_label(r.eps), "seen": r.seen.value, "seconds": r.seconds,
                            **r.metrics.as_dict(), **{f"report_{k}": v for k, v in r.report.items()}}
                           for r in outcome.attacks],
               "flags": [dataclasses.asdict(f) for f in flags],
               # per-epoch losses and seconds (and DDID's phase-1 manifest), from when the checkpoint was trained
               "training": {"train_seconds": outcome.train_info.get("train_seconds"),
                            "loaded_from_cache": outcome.train_info.get("cached", False),
                            "history": outcome.train_info.get("history", {})}}
    _write_text(folder / "config.json", json.dumps(config, indent=2, default=str))
    _write_text(folder / "metrics.json", json.dumps(metrics, indent=2, default=str))
    _write_text(folder / "per_id_ap.csv", per_id_table(outcome))
    record = ranking_record(outcome)
    _write_text(folder / "ranking.json", json.dumps(record, indent=2))
    flag_lines = format_flags(flags)
    log = (f"{outcome.workspace.dataset.summary()}\n{prov['command']}\n\n{format_table(outcome)}\n\n"
           f"{format_summary(outcome)}\n\n"
           f"attacked with: {outcome.defense.attacked_with}\n{flag_lines}\n")
    _write_text(folder / "log.txt", log)
    from benchmark.plots import plot_run

    plot_run(outcome, record, folder)
    paths: dict[str, Path] = {"run folder": folder}
    paths.update(write_leaderboards(rows, leaderboard_dir))
    print(flag_lines)
    return paths
