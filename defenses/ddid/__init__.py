"""DDID, the reference defense: one module per part (balancing, fnes, adversarial learning, self-meta)."""

from defenses.ddid.defense import DDID, DDIDOptions

__all__ = ["DDID", "DDIDOptions"]
