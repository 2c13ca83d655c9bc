"""Defenses: registry, baselines and DDID (the reference defense)."""

from defenses.base import DEFENSES, DefendedModel, Defense, build_defense, register_defense

__all__ = ["DEFENSES", "DefendedModel", "Defense", "build_defense", "register_defense"]
