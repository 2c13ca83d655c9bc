"""`execute`: the one way a run happens.

The CLI's `run`, `eval` and `train`, the Python API (`benchmark.evaluate`), sweep workers (which
load the specification from JSON) and `validate` all call it. The specification enters once and
is passed down; nothing below reads the command line or rebuilds the specification. What a run
writes is decided by the `write` argument (a `Writer` from the report layer, or None).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from benchmark.core.allocator import tune_allocator
from benchmark.core.device import deterministic_kernels, resolve_device
from benchmark.core.distributed import world
from benchmark.core.errors import BenchmarkError, RunInterrupted
from benchmark.core.metrics import evaluate_features
from benchmark.run.cells import CellStore, attack_context, attack_options, run_attack
from benchmark.run.checkpoints import attack_views, deploy, embed, external_model, train_or_load
from benchmark.run.outcome import AttackResult, RunOutcome, Runtime, TrainInfo, eps_label, seen_tag
from benchmark.run.sanity import sanity_flags
from benchmark.run.spec import RunSpec
from benchmark.run.suites import run_suites, run_worst_cases
from benchmark.run.workspace import Workspace, load_workspace
from defenses import Defense

log = logging.getLogger("benchmark")


class Writer(Protocol):
    """Where a run's records go: checked before any work, called once with the finished outcome."""

    def check(self, spec: RunSpec) -> None:
        """Refuse (one-line BenchmarkError) before any work when the run could not be written."""

    def __call__(self, outcome: RunOutcome) -> dict[str, Path]:
        """Write the run's records; returns what was written, by label."""


def apply_runtime(runtime: Runtime) -> None:
    """Process-wide settings of a run: CPU threads, deterministic kernels (bitwise-repeatable CPU runs) and the
    heap settings that spare every step its page faults (`benchmark.core.allocator`)."""
    tune_allocator()
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    deterministic_kernels()


def execute(spec: RunSpec, runtime: Runtime | None = None, write: Writer | None = None, *,
            model: nn.Module | None = None, workspace: Workspace | None = None) -> RunOutcome:
    """Train or load (or take the user's `model`), score clean queries, every (attack, ε) cell and the suite.

    `model` is the user's module for a spec whose model is external (its content hash must match
    the spec's); `workspace` is the run's data when the caller already loaded it for this spec.
    Finished attack cells are cached as they complete, so a killed run resumes.
    """
    runtime = runtime or Runtime()
    apply_runtime(runtime)
    if write is not None and world().is_main:
        write.check(spec)
    torch.manual_seed(spec.seed)
    device = resolve_device(runtime.device)
    ws = workspace or load_workspace(spec)
    defense = spec.defense.build()
    config = defense.config()
    if spec.model.external:
        net, info = external_model(spec.model, device, model)
    else:
        net, info = train_or_load(spec.defense, spec, ws, device, retrain=runtime.retrain, defense=defense,
                                  config=config)
    outcome = attack_model(spec, defense, config, net, info, ws, device, progress=runtime.progress)
    if write is not None and world().is_main:
        outcome.written = write(outcome)
    return outcome


def attack_model(spec: RunSpec, defense: Defense, config: dict[str, Any], net: nn.Module, info: TrainInfo,
                 ws: Workspace, device: torch.device, *, progress: bool = False,
                 stop_at: torch.Tensor | None = None) -> RunOutcome:
    """Deploy `net` behind `defense`, score the clean queries, every (attack, ε) cell and the suite.

    `execute` calls it once it has the model; `validate`'s planted-example rule calls it on a planted model,
    with `stop_at` (per query, an AP at which the suite may stop besides its own floor).
    Finished attack cells are cached as they complete, so a killed run resumes.
    """
    deployed = deploy(defense, net)
    qf = embed(deployed, ws.query.images, spec, device)
    gf = embed(deployed, ws.gallery.images, spec, device)
    if not (torch.isfinite(qf).all() and torch.isfinite(gf).all()):
        raise BenchmarkError(f"defense '{spec.defense.label}' gives non-finite embeddings; its checkpoint "
                             f"{info.checkpoint} is unusable, rerun with --retrain")
    clean = evaluate_features(qf, gf, ws.query.pids, ws.gallery.pids, ws.query.camids, ws.gallery.camids,
                              spec.metric)
    cells = CellStore(spec, info.checkpoint_key, defense, config, ws, device)
    views = attack_views(defense, deployed)
    outcome = RunOutcome(spec, defense, clean, [], info, ws, deployed, qf, gf, views, [], defense_config=config,
                         stop_at=stop_at)
    jobs = [(a.name, e) for a in spec.attacks for e in spec.eps]
    clean_images = ws.query.float_images()  # what every cell's output is checked against
    try:
        for name, eps in tqdm(jobs, desc=f"attacks on {spec.defense.label}", disable=not progress or None,
                              leave=False):
            outcome.attacks.append(_attack_cell(outcome, cells, name, eps, clean_images, device))
        if spec.suite is not None:
            outcome.aggregates.extend(run_suites(outcome, cells, clean_images))
    except KeyboardInterrupt:
        raise RunInterrupted(f"interrupted after {len(outcome.attacks)} of {len(jobs)} attack cells; finished cells "
                             "are cached, run the same command again to resume") from None
    outcome.aggregates.extend(run_worst_cases(outcome))
    if outcome.resumed:
        log.info("resumed: %d of %d attack cells came from the cache", outcome.resumed, len(jobs))
    outcome.flags = sanity_flags(outcome)
    return outcome


def _attack_cell(outcome: RunOutcome, cells: CellStore, name: str, eps: float, clean_images: torch.Tensor,
                 device: torch.device) -> AttackResult:
    """One (attack, ε) cell: from the cache (verified) or run under the harness's checks, then scored."""
    spec, ws, view = outcome.spec, outcome.workspace, outcome.views[0]
    options = attack_options(spec, name, eps)
    key = cells.key(name, eps, options, view.surrogate_name)
    cached = cells.load_checked(key, clean_images, eps, name, spec.norm)
    if cached is not None:
        adv, report, seconds = cached
    else:
        ctx = attack_context(spec, ws, outcome.query_feats, outcome.gallery_feats, device, name)
        adv, report, seconds = run_attack(name, eps, view, ws, ctx, spec, clean_images)
        cells.save(key, adv, report, seconds)
    af = embed(outcome.model, adv, spec, device)
    metrics = evaluate_features(af, outcome.gallery_feats, ws.query.pids, ws.gallery.pids, ws.query.camids,
                                ws.gallery.camids, spec.metric)
    log.info("attack %-11s eps %-7s mAP %6.2f  R1 %6.2f  (%s)", name, eps_label(eps), metrics.mAP,
             metrics.rank1, "from the cache" if cached is not None else f"{seconds:.1f} s")
    return AttackResult(name, eps, metrics, seen_tag(outcome.defense, name), seconds, report, adv,
                        resumed=cached is not None, forward=view.surrogate_name)
