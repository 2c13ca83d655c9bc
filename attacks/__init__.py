"""ReID metric attacks: registry, base class, and one module per attack."""

from attacks.base import ATTACKS, Attack, AttackContext, AttackOptions, build_attack, register_attack

__all__ = ["ATTACKS", "Attack", "AttackContext", "AttackOptions", "build_attack", "register_attack"]
