"""What the command line prints about a finished run."""

from __future__ import annotations

from benchmark.run.outcome import RunOutcome, format_summary, format_table
from benchmark.run.sanity import format_flags


def print_outcome(outcome: RunOutcome) -> None:
    """The data set, where the model came from, the per-attack table, the summary and what was written."""
    info, spec = outcome.train_info, outcome.spec
    print(outcome.workspace.dataset.summary())
    if spec.model.external:
        print(f"model {spec.model.backbone} ({str(spec.model.weights_sha256)[:12]}) behind defense "
              f"{spec.defense.label}: scored as it is (not trained by the benchmark)")
    else:
        source = "loaded from cache" if info.cached else "trained"
        print(f"defense {spec.defense.label} / backbone {spec.model.backbone} / seed {spec.seed}: {source} "
              f"({float(info.train_seconds or 0):.0f} s training), checkpoint {info.checkpoint}")
    if outcome.resumed:
        print(f"resumed: {outcome.resumed} of {len(outcome.attacks)} attack cells came from the cache")
    if not spec.official:
        print(f"custom run (not the standard protocol): {spec.settings}")
    print(format_table(outcome))
    summary = format_summary(outcome)
    if summary:
        print(summary)
    print(format_flags(outcome.flags))
    for label, path in outcome.written.items():
        print(f"{label}: {path}")
