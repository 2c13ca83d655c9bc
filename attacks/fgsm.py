"""FGSM on the embedding (Goodfellow et al., ICLR 2015, adapted to metric learning).

Threat model: white-box, L-inf, query side. Defaults: eps = 8/255, one step of size eps.
Objective: maximise d(f(x_hat), f(x)); the start is x plus a symmetry-breaking perturbation far
below one grey level, because the gradient of this objective vanishes at x_hat = x.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks.base import AttackOptions, register_attack
from attacks.sma import SelfMetricAttack
from benchmark.core.options import option


@dataclass(frozen=True)
class FGSMOptions(AttackOptions):
    """One step of size ε."""
    step: float = option(8 / 255, above=0, high=1)
    steps: int = option(1, low=1, high=100_000)


@register_attack("fgsm", paper="Goodfellow et al. ICLR 2015", objective="self-distance")
class FGSM(SelfMetricAttack):
    """One signed-gradient step of size eps pushing the embedding away from the clean one (SMA's loss)."""

    @classmethod
    def throughput_options(cls, iterations: int, batch: int) -> dict | None:
        """One step by definition."""
        return {}

    @classmethod
    def throughput_iterations(cls, iterations: int) -> int:
        """One step by definition."""
        return 1

    Options = FGSMOptions
