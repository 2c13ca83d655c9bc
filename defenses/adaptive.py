"""How a white-box attacker differentiates through a defense: adaptive forwards.

A defense with a test-time transform declares, in its hook `Defense.adaptive_forwards()`, one or
more `AdaptiveForward`s: the exact operation where it has a gradient almost everywhere (a median
filter), a smooth approximation of a step that has none (JPEG's or bit-depth's rounding), and
`eot_samples` > 1 for a randomised transform (expectation over transformation, Athalye et al.,
ICML 2018). Attacks see the deployed model through an `AttackView`: its forward *value* is always
what the defense really computes; only the backward pass uses the surrogate (BPDA with a
differentiable approximation). A transform that declares nothing is differentiated as it is, so a
non-differentiable third-party transform shows up as zero gradients in the contract test and the
`zero-grad` flag instead of quietly passing for robust. Identity BPDA over a whole transform is
only a named choice (`IDENTITY_BPDA`), never the default.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmark.core.errors import BenchmarkError
from defenses.base import AdaptiveForward, DefendedModel, Defense

DIRECT = AdaptiveForward("direct", summary="no test-time transform: the model's own gradients")
EXACT = AdaptiveForward("exact", summary="the transform itself is differentiated")
IDENTITY_BPDA = AdaptiveForward("bpda", nn.Identity, summary="identity backward through the whole transform "
                                "(weak; only on request)")


def declared_forwards(defense: Defense) -> tuple[AdaptiveForward, ...]:
    """The defense's adaptive forwards, strongest-first: its hook's, or direct / exact by default."""
    forwards = tuple(defense.adaptive_forwards())
    if not forwards:
        forwards = (DIRECT,) if defense.transform() is None else (EXACT,)
    names = [f.name for f in forwards]
    if not forwards or len(set(names)) != len(names):
        raise BenchmarkError(f"defense '{defense.name}' declares adaptive forwards {names}: give at least one, "
                             "each with its own name")
    return forwards


def select_forwards(defense: Defense, choice: str = "auto") -> tuple[AdaptiveForward, ...]:
    """`auto`: every declared forward (attacks use the first, the standard suite all); else the named one."""
    forwards = declared_forwards(defense)
    if choice == "auto":
        return forwards
    named = {f.name: f for f in (*forwards, IDENTITY_BPDA)}
    if choice not in named:
        raise BenchmarkError(f"defense '{defense.name}': surrogate '{choice}' is not one of "
                             f"{', '.join(['auto', *named])}")
    return (named[choice],)


class AttackView(nn.Module):
    """The deployed model as a white-box attacker sees it: true output forward, surrogate gradient backward."""

    def __init__(self, deployed: DefendedModel, forward: AdaptiveForward) -> None:
        super().__init__()
        self.deployed = deployed
        self.forward_spec = forward
        self.surrogate = forward.surrogate() if forward.surrogate is not None else None
        self.eot_samples = forward.eot_samples

    @property
    def surrogate_name(self) -> str:
        """Name of the adaptive forward in use."""
        return self.forward_spec.name

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """What the defense computes (black-box attacks and scoring see only this)."""
        return self.deployed.embed(x)

    def attack_embed(self, x: torch.Tensor) -> torch.Tensor:
        """The defense's true output, with the gradient of the declared surrogate."""
        transform = self.deployed.transform
        if transform is None:
            return self.deployed.model.attack_embed(x)
        out = transform(x)
        if self.surrogate is not None:
            approx = self.surrogate(x)
            out = out.detach() + approx - approx.detach()
        return self.deployed.model.attack_embed(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)
