"""Every adversarial batch is checked before it is scored: inside the ball, inside [0, 1], finite."""

from __future__ import annotations

import torch

from benchmark.core.errors import AttackValidityError

TOLERANCE = 1e-6


def check_adversarial(adv: torch.Tensor, clean: torch.Tensor, eps: float, attack: str, norm: str = "linf") -> None:
    """Raise AttackValidityError naming the attack when its output breaks the threat model."""
    if adv.shape != clean.shape:
        raise AttackValidityError(f"attack '{attack}' returned shape {tuple(adv.shape)} for inputs "
                                  f"{tuple(clean.shape)}")
    if not torch.isfinite(adv).all():
        raise AttackValidityError(f"attack '{attack}' returned non-finite pixels; result refused")
    lo, hi = float(adv.min()), float(adv.max())
    if lo < -TOLERANCE or hi > 1 + TOLERANCE:
        raise AttackValidityError(f"attack '{attack}' left [0, 1] (min {lo:.6f}, max {hi:.6f}); result refused")
    delta = (adv.float() - clean.float()).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    worst = float(size.max()) if len(size) else 0.0
    if worst > eps + TOLERANCE:
        raise AttackValidityError(f"attack '{attack}' left the {norm} ball: ||delta|| = {worst:.6f} > eps = "
                                  f"{eps:.6f}; result refused")
