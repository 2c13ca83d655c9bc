"""The Python API: score any embedding model with the benchmark's protocol and standard suite.

    import benchmark
    result = benchmark.evaluate(model, dataset="synthped", suite="standard-v3", eps=8 / 255)
    print(result.clean.mAP, result.worst_case.mAP)

`model` is any `nn.Module` mapping a batch of images in [0, 1] (B x 3 x H x W, normalisation
inside the model) to embeddings (B x D). It is scored as it is, on the data set's test identities,
through `execute`, the code path of the command line, with the same validity checks on every
adversarial image. A module whose forward has a step without a useful gradient declares a smooth
stand-in as a method `attack_embed(x)`; white-box attacks differentiate it while the evaluator
scores the real forward. Its content (parameters and buffers) names the result.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn

from attacks.suites import DEFAULT_SUITE
from benchmark.core.errors import BenchmarkError
from benchmark.core.metrics import RetrievalMetrics
from benchmark.core.provenance import provenance
from benchmark.report.runs import intervals, per_query_table
from benchmark.run.execute import execute
from benchmark.run.outcome import RunOutcome, Runtime, eps_label
from benchmark.run.sanity import Flag
from benchmark.run.spec import RunSpec, external_model_spec, make_spec


@dataclass
class Evaluation:
    """What `evaluate` returns: clean and worst-case metrics, per-query records, flags and provenance."""

    spec: RunSpec
    clean: RetrievalMetrics
    #: the suite's per-query worst case at each ε (label such as '8/255'); empty without a suite
    worst_cases: dict[str, RetrievalMetrics]
    #: metrics of each single attack, by (attack, ε label)
    attacks: dict[tuple[str, str], RetrievalMetrics]
    #: one row per query: its identity, camera and AP / rank-1 (fractions) clean, under each attack and worst case
    per_query: pd.DataFrame
    flags: list[Flag]
    provenance: dict[str, Any]
    outcome: RunOutcome = field(repr=False)

    @property
    def worst_case(self) -> RetrievalMetrics:
        """The suite's worst case at the run's only ε (the headline number)."""
        if len(self.worst_cases) != 1:
            raise BenchmarkError(f"this evaluation has {len(self.worst_cases)} worst cases (one per ε of a suite); "
                                 "read Evaluation.worst_cases[eps_label]")
        return next(iter(self.worst_cases.values()))

    def interval(self, metrics: RetrievalMetrics, which: str = "mAP") -> tuple[float, float]:
        """95 % bootstrap interval (percent, resampling identities) of `metrics`' mAP or R1, e.g.
        `result.interval(result.worst_case)`: the same interval a board row records."""
        if which not in ("mAP", "R1"):
            raise BenchmarkError(f"interval of {which!r}: choose 'mAP' or 'R1'")
        values = intervals(metrics, self.outcome.workspace.query.pids)
        return values[f"{which}_low"], values[f"{which}_high"]


def evaluate(model: nn.Module, dataset: str = "synthped", *, data_root: str | None = None,
             dataset_options: Mapping[str, str] | None = None, suite: str | None = DEFAULT_SUITE,
             attacks: Sequence[str] = (), eps: float | Sequence[float] = 8 / 255, metric: str = "euclidean",
             input_size: tuple[int, int] = (128, 64), defense: str = "none", seed: int = 0, data_seed: int = 0,
             check_convergence: bool = False, name: str | None = None, device: str = "auto",
             threads: int | None = None, progress: bool = False) -> Evaluation:
    """Score `model` on `dataset`'s test identities: clean, under `attacks` and the versioned `suite`, at each ε.

    ε is in [0, 1] units (8/255 is the protocol's standard); `defense` may put a registered input
    transform (e.g. "jpeg") in front of the model, attacked through its adaptive forward. Nothing
    is trained and nothing is written; results are custom (named by the model's content hash).
    """
    if not isinstance(model, nn.Module):
        raise BenchmarkError(f"evaluate() scores an nn.Module; got {type(model).__name__}")
    epsilons = [eps] if isinstance(eps, (int, float)) else list(eps)
    if any(not isinstance(e, (int, float)) or not 0 < e <= 1 for e in epsilons):
        raise BenchmarkError(f"eps={eps!r}: give ε in [0, 1] units, e.g. eps=8/255 (not 8)")
    cls = type(model)
    label = name or f"{cls.__module__}.{cls.__qualname__}"
    external = external_model_spec(model, f"module:{cls.__module__}.{cls.__qualname__}", label)
    names = ",".join([*attacks, *([suite] if suite else [])]) or "none"
    spec = make_spec(defense=defense, attacks=names, dataset=dataset, data_root=data_root,
                     eps=[e * 255 for e in epsilons], seed=seed, height=input_size[0], width=input_size[1],
                     metric=metric,
                     dataset_options={k: str(v) for k, v in (dataset_options or {}).items()},
                     check_convergence=check_convergence, external=external, data_seed=data_seed)
    outcome = execute(spec, Runtime(device=device, progress=progress, threads=threads), model=model)
    device_used = next(outcome.model.parameters()).device
    return Evaluation(
        spec=spec, clean=outcome.clean,
        worst_cases={eps_label(r.eps): r.metrics for r in outcome.aggregates if r.attack == spec.suite},
        attacks={(r.attack, eps_label(r.eps)): r.metrics for r in outcome.attacks},
        per_query=pd.read_csv(io.StringIO(per_query_table(outcome))), flags=list(outcome.flags),
        provenance=provenance(device_used, spec.seed), outcome=outcome)
