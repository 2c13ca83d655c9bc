"""Versioned attack suites (AutoAttack style): a fixed list of attacks and budgets under one name.

A suite's result is the per-query worst case over its members: for every query, the
adversarial image with the lowest AP. Members run in order and each works only on the queries
whose worst AP so far is still above the suite's floor, so attacks are not spent on queries that
are already broken. A white-box member runs once per adaptive forward the defense declares.
Changing a suite means registering a new version, never editing one: every row records its suite.
Third-party suites register through the entry-point group `reid_robustness_bench.suites`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmark.core.protocol import HEADLINE_SUITE
from benchmark.core.registry import EntryInfo, Registry


@dataclass(frozen=True)
class SuiteMember:
    """One attack of a suite with its fixed options (ε comes from the run)."""
    attack: str
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Suite:
    """A named, versioned ensemble of attacks, run with a floor on per-query AP (given to APGD members too)."""
    name: str
    members: tuple[SuiteMember, ...]
    #: AP (fraction) at or below which a query counts as broken: later members skip it
    floor: float
    summary: str = ""
    #: the floor counts from each query's lowest reachable AP (all its true matches ranked last), not from 0
    floor_above_lowest: bool = False
    #: the convergence check also reruns the first member from the worst images found (not only more iterations)
    restart_from_worst: bool = False

    def doubled(self) -> Suite:
        """What the convergence check runs: the iterative members with twice their iterations, then (where the
        suite declares it) its first member again, started from the worst images found so far."""
        members = []
        for m in self.members:
            opts = dict(m.options)
            if "steps" in opts:
                opts["steps"] = 2 * int(opts["steps"])
                members.append(SuiteMember(m.attack, tuple(sorted(opts.items()))))
        if self.restart_from_worst:
            first = dict(self.members[0].options)
            first.update(start="given", restarts=1)
            members.append(SuiteMember(self.members[0].attack, tuple(sorted(first.items()))))
        return Suite(f"{self.name}@2x", tuple(members), self.floor, f"{self.name} with doubled iterations",
                     self.floor_above_lowest, self.restart_from_worst)


@dataclass
class SuiteInfo(EntryInfo):
    """What `list suites` knows of a suite besides its members."""

    #: the short name --attack takes (standard)
    alias: str = ""


SUITES: Registry[Suite] = Registry("suite", "reid_robustness_bench.suites", builtin_modules=(), info=SuiteInfo)


def _alias(name: str) -> str:
    """`standard` names the protocol's headline suite (`HEADLINE_SUITE`), whichever version that is."""
    return "standard" if name == HEADLINE_SUITE else ""


STANDARD_V1 = Suite(
    name="standard-v1",
    members=(SuiteMember("apgd-ce", (("steps", 100),)),
             SuiteMember("apgd-margin", (("steps", 100),)),
             SuiteMember("apgd-fna", (("steps", 100),)),
             SuiteMember("apgd-sma", (("steps", 100),)),
             SuiteMember("apgd-ifgsm", (("steps", 100),)),
             SuiteMember("query-bb", (("queries", 500),))),
    floor=0.01,
    summary="APGD (100 iterations) with five losses (ce, margin, fna, sma, ifgsm), then Square (500 queries); "
            "floor AP 1 %",
)
SUITES.register(STANDARD_V1.name, summary=STANDARD_V1.summary, alias=_alias(STANDARD_V1.name))(STANDARD_V1)

STANDARD_V2 = Suite(
    name="standard-v2",
    members=(SuiteMember("apgd-sap", (("restarts", 2), ("steps", 100))),
             SuiteMember("apgd-ce", (("steps", 100),)),
             SuiteMember("apgd-margin", (("steps", 100),)),
             SuiteMember("apgd-fna", (("steps", 100),)),
             SuiteMember("query-bb", (("queries", 500),))),
    floor=0.01,
    floor_above_lowest=True,
    restart_from_worst=True,
    summary="APGD on smoothed AP (100 iterations, 2 restarts) first, then APGD ce, margin and fna, then Square "
            "(500 queries) on the queries still open; a query stops 1 AP point above the lowest AP it can reach",
)
SUITES.register(STANDARD_V2.name, summary=STANDARD_V2.summary, alias=_alias(STANDARD_V2.name))(STANDARD_V2)

STANDARD_V3 = Suite(
    name="standard-v3",
    members=(SuiteMember("apgd-sap", (("restarts", 2), ("steps", 100))),
             SuiteMember("apgd-sap", (("start", "given"), ("steps", 100), ("temperature", 0.01))),
             SuiteMember("apgd-sap", (("start", "given"), ("steps", 100), ("temperature", 0.002))),
             SuiteMember("apgd-ce", (("steps", 100),)),
             SuiteMember("apgd-margin", (("steps", 100),)),
             SuiteMember("apgd-fna", (("steps", 100),)),
             SuiteMember("query-bb", (("queries", 500),))),
    floor=0.001,
    floor_above_lowest=True,
    restart_from_worst=True,
    summary="standard-v2 with the smoothed AP annealed: after the first member, APGD at temperatures 0.01 and "
            "0.002, each from the worst images so far; a query stops 0.1 AP point above the lowest AP it can reach",
)
SUITES.register(STANDARD_V3.name, summary=STANDARD_V3.summary, alias=_alias(STANDARD_V3.name))(STANDARD_V3)

#: what `--attack standard` (and `--attack all`) runs today: the headline suite; a board row's `suite` names the
#: version it ran
DEFAULT_SUITE = HEADLINE_SUITE
#: the suites whose runs `publish` admits to the official boards: older versions stay for the recipes not yet
#: measured with a newer one
PUBLISHED_SUITES = (STANDARD_V1.name, STANDARD_V2.name, STANDARD_V3.name)
