"""Run candidate suites for a new standard-suite version through the benchmark's own `run`.

A published suite never changes, so a new version is tried first under study names: this script registers
the candidates of the `standard-v3` study in the suite registry, then hands its arguments to
`python -m benchmark` (one entry point, the same cells, cache and run folders):

    python scripts/suite_candidates.py run --dataset pku --data-root ../shared/data/pku-reid-subset \\
        --defense ddid --seed 0 --threads 1 --attack cand-fine-sharp2 --results-dir study/runs \\
        --leaderboard-dir study/leaderboards

Candidates (each `standard-v2`'s members unless said): `cand-fine`, v2 with a query stopping 0.1 AP point
above its lowest reachable AP instead of 1; `cand-fine-sharp`, that plus APGD on the smoothed AP at
temperature 0.01 from the worst images after the first member; `cand-fine-sharp2`, that plus a second one at
0.002 (= `standard-v3`). `scripts/suite_costs.py RUN... --csv` tabulates the runs
(`leaderboards/studies/suite-v3-candidates-pku.csv`). Runs of a candidate are custom: `publish` refuses them.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from attacks.suites import STANDARD_V2, STANDARD_V3, SUITES

CANDIDATES = (
    replace(STANDARD_V2, name="cand-fine", floor=STANDARD_V3.floor,
            summary="standard-v2 with a query stopping 0.1 AP point above its lowest reachable AP"),
    replace(STANDARD_V3, name="cand-fine-sharp", members=STANDARD_V3.members[:2] + STANDARD_V3.members[3:],
            summary="cand-fine plus APGD on the smoothed AP at temperature 0.01 from the worst images"),
    replace(STANDARD_V3, name="cand-fine-sharp2", summary="cand-fine-sharp plus a second one at 0.002"),
)


def register_candidates() -> None:
    """Put the study's candidate suites in the registry (once per process)."""
    for suite in CANDIDATES:
        if suite.name not in SUITES:
            SUITES.register(suite.name, summary=suite.summary)(suite)


if __name__ == "__main__":
    from benchmark.cli.main import main

    register_candidates()
    sys.exit(main(sys.argv[1:]))
