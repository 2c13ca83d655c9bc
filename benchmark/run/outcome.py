"""What a run produced (its outcome and attack results), how it executes, and the tables it prints."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark.core.enums import Seen
from benchmark.core.metrics import RetrievalMetrics
from benchmark.run.spec import RunSpec
from benchmark.run.workspace import Workspace
from defenses import DefendedModel, Defense
from defenses.adaptive import AttackView


@dataclass
class Runtime:
    """How a run executes; nothing here changes its numbers."""

    device: str = "auto"
    retrain: bool = False
    progress: bool = True
    #: torch CPU threads (None: torch's choice); recorded in every row's provenance
    threads: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The runtime as a sweep cell stores it."""
        return dataclasses.asdict(self)


# -- attacks -------------------------------------------------------------------------------------------
@dataclass
class TrainInfo:
    """Where a run's model came from: its checkpoint, whether the cache had it, and how it was trained."""

    #: the checkpoint folder (for an external model: its factory or class)
    checkpoint: str
    #: the cache key of the checkpoint (names its attack cells)
    checkpoint_key: str
    cached: bool = False
    train_seconds: float | None = None
    #: per-epoch losses and seconds, and a defense's own records (DDID: phase 1), from when it was trained
    history: dict[str, Any] = field(default_factory=dict)
    #: who trained it, when, with what command
    provenance: dict[str, Any] = field(default_factory=dict)
    #: everything the checkpoint depends on (its key's payload)
    key: dict[str, Any] = field(default_factory=dict)
    #: digest of the model as it computes (weights, module tree, forward code): one model whatever its key
    model_digest: str = ""


@dataclass
class AttackResult:
    """Scores and outputs of one (attack, ε) cell."""
    attack: str
    eps: float
    metrics: RetrievalMetrics
    seen: Seen
    seconds: float
    report: dict[str, Any]
    adversarial: torch.Tensor = field(repr=False)
    resumed: bool = False
    #: adaptive forward the attack differentiated through ('' for aggregates)
    forward: str = ""


@dataclass
class RunOutcome:
    """Everything a run produced, for printing and writing."""
    spec: RunSpec
    defense: Defense
    clean: RetrievalMetrics
    attacks: list[AttackResult]
    train_info: TrainInfo
    workspace: Workspace = field(repr=False)
    model: DefendedModel = field(repr=False)
    query_feats: torch.Tensor = field(repr=False)
    gallery_feats: torch.Tensor = field(repr=False)
    #: white-box views of the deployed model, one per adaptive forward (the first is the attacks')
    views: list[AttackView] = field(repr=False, default_factory=list)
    #: per-query worst cases: the suite's (`standard-v3`) and, with two or more sources, the run's (`worst-case`)
    aggregates: list[AttackResult] = field(default_factory=list)
    #: the deployed defense's configuration, computed once
    defense_config: dict[str, Any] = field(default_factory=dict)
    #: sanity flags raised for the run (computed once, after the attacks)
    flags: list[Any] = field(default_factory=list)
    #: what the run's writer wrote, by label (empty when nothing was written)
    written: dict[str, Path] = field(default_factory=dict)
    #: per query, an AP (fraction) at or below which the suite stops attacking it, besides its own floor
    #: (the planted-example check: once a query reached its target, later members cannot change the verdict)
    stop_at: torch.Tensor | None = field(repr=False, default=None)

    @property
    def resumed(self) -> int:
        """How many attack cells came from the cache."""
        return sum(r.resumed for r in self.attacks)

    @property
    def attacked_with(self) -> str:
        """How white-box attacks reached the model: the adaptive forwards' names joined by '+'."""
        return "+".join(v.surrogate_name for v in self.views) or "direct"


def seen_tag(defense: Defense, attack: str) -> Seen:
    """`seen` when the defense trains with the attack, else `unseen`."""
    return Seen.SEEN if attack in defense.seen_attacks() else Seen.UNSEEN


def eps_label(eps: float) -> str:
    """8/255-style label for an epsilon given in [0, 1] units."""
    n = eps * 255
    return f"{round(n)}/255" if math.isclose(n, round(n), abs_tol=1e-6) else f"{n:.3g}/255"


def format_table(outcome: RunOutcome) -> str:
    """The per-attack table a run prints."""
    head = f"{'attack':<12} {'eps':>7} {'seen':>7} {'mAP':>6} {'R1':>6} {'R5':>6} {'R10':>6} {'mINP':>6} {'s':>6}"
    c = outcome.clean
    lines = [head, "-" * len(head),
             f"{'clean':<12} {'-':>7} {'-':>7} {c.mAP:6.2f} {c.rank1:6.2f} {c.rank5:6.2f} {c.rank10:6.2f} "
             f"{c.mINP:6.2f} {'':>6}"]
    for r in outcome.attacks + outcome.aggregates:
        m = r.metrics
        lines.append(f"{r.attack:<12} {eps_label(r.eps):>7} {r.seen.value:>7} {m.mAP:6.2f} {m.rank1:6.2f} "
                     f"{m.rank5:6.2f} {m.rank10:6.2f} {m.mINP:6.2f} {r.seconds:6.1f}")
    return "\n".join(lines)


def _mean_worst(results: list[AttackResult]) -> str:
    if not results:
        return "-"
    maps = [r.metrics.mAP for r in results]
    return f"{sum(maps) / len(maps):.2f}/{min(maps):.2f}"


def format_summary(outcome: RunOutcome) -> str:
    """Robust mAP over all, unseen and seen attacks (mean and worst) per epsilon, as the summary board has it."""
    lines = [f"{'summary':<9} {'eps':>7} {'attacks':>8} {'all mean/worst':>16} {'unseen mean/worst':>19} "
             f"{'seen mean/worst':>17}  worst attack"]
    for eps in sorted({r.eps for r in outcome.attacks}):
        scope = [r for r in outcome.attacks if r.eps == eps]
        worst = min(scope, key=lambda r: r.metrics.mAP)
        lines.append(f"{'':<9} {eps_label(eps):>7} {len(scope):>8} {_mean_worst(scope):>16} "
                     f"{_mean_worst([r for r in scope if r.seen is Seen.UNSEEN]):>19} "
                     f"{_mean_worst([r for r in scope if r.seen is Seen.SEEN]):>17}  {worst.attack}")
    for r in outcome.aggregates:
        note = r.report.get("convergence")
        extra = (f"; doubled APGD iterations: {note['mAP']:.2f} ({note['delta']:+.2f})" if note else "")
        lines.append(f"per-query worst case {r.attack:<12} {eps_label(r.eps):>7}  mAP {r.metrics.mAP:6.2f}  "
                     f"R1 {r.metrics.rank1:6.2f}{extra}")
    return "\n".join(lines) if len(lines) > 1 else ""
