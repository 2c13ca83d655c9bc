"""Benchmark axes as enums (RobustBench style): they name CSV values and CLI choices."""

from enum import StrEnum


class AttackFamily(StrEnum):
    GRADIENT = "gradient"
    GUIDED = "guided"
    UNIVERSAL = "universal"
    TRANSFER = "transfer"
    QUERY = "query"


class Knowledge(StrEnum):
    WHITE_BOX = "white-box"
    TRANSFER = "transfer"
    SCORE_BASED = "score-based"


class Side(StrEnum):
    QUERY = "query"
    GALLERY = "gallery"


class Norm(StrEnum):
    LINF = "linf"
    L2 = "l2"


class Seen(StrEnum):
    CLEAN = "clean"
    SEEN = "seen"
    UNSEEN = "unseen"
