"""Benchmark axes as enums (RobustBench style): they name CSV values and CLI choices."""

from enum import StrEnum


class AttackFamily(StrEnum):
    """How an attack works."""
    GRADIENT = "gradient"
    GUIDED = "guided"
    UNIVERSAL = "universal"
    TRANSFER = "transfer"
    QUERY = "query"


class Knowledge(StrEnum):
    """What the attacker may see."""
    WHITE_BOX = "white-box"
    TRANSFER = "transfer"
    SCORE_BASED = "score-based"


class Side(StrEnum):
    """What the attacker perturbs."""
    QUERY = "query"
    GALLERY = "gallery"


class Norm(StrEnum):
    """The threat model's norm."""
    LINF = "linf"
    L2 = "l2"


class Seen(StrEnum):
    """Whether a defense trained with an attack."""
    CLEAN = "clean"
    SEEN = "seen"
    UNSEEN = "unseen"
    #: a per-query worst case over several attacks (a suite, or every attack of a run)
    WORST_CASE = "worst-case"
