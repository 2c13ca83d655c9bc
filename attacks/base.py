"""Attack base class (torchattacks style) and the guide context every ReID attack shares.

The base class owns the device, the model's train/eval mode (restored afterwards), the seed, the
threat model (epsilon, step, iterations, random start, L-inf or L2), the projection onto the
epsilon-ball intersected with [0, 1] and the ascent schedules: PGD (fixed step, below) and APGD
(`attacks.apgd`, chosen with the option `schedule="apgd"`). A white-box subclass supplies only
`loss` (to be maximised); black-box, universal and transfer attacks override `perturb`.

White-box gradients go through the model's *adaptive* forward (`attack_embed`: the defense's real
output forward, its declared differentiable surrogate backward, EOT over `eot_samples` draws; see
`defenses.adaptive`). Gradients are taken with `torch.autograd.grad` with respect to the input
only, so nothing accumulates in model parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from attacks.apgd import apgd_ascent
from attacks.context import AttackContext, AttackOptions, AttackTarget
from benchmark.core.enums import AttackFamily, Knowledge, Norm, Side
from benchmark.core.options import build_options
from benchmark.core.registry import EntryInfo, Registry
from benchmark.models import eval_mode

# Without a random start the self-distance loss d(f(x_hat), f(x)) has a zero gradient at x_hat = x;
# a start this small (far below one grey level) only breaks that symmetry.
SYMMETRY_BREAK = 1e-4


def attack_embed(model: AttackTarget, x: torch.Tensor) -> torch.Tensor:
    """The embedding a white-box attacker differentiates: the model's adaptive forward (`AttackTarget`)."""
    return model.attack_embed(x)


class Attack:
    """Base class: owns device, eval mode, seed, ε-ball projection and the ascent schedules (PGD, APGD)."""
    name: ClassVar[str] = ""
    family: ClassVar[AttackFamily] = AttackFamily.GRADIENT
    knowledge: ClassVar[Knowledge] = Knowledge.WHITE_BOX
    side: ClassVar[Side] = Side.QUERY
    #: True for attacks that learn on the training identities (the harness then passes a copy of that split)
    uses_training_split: ClassVar[bool] = False
    Options: ClassVar[type] = AttackOptions
    #: batch size used when the harness runs the attack over a whole query set
    batch_size: ClassVar[int] = 128

    def __init__(self, model: nn.Module, **options: Any) -> None:
        self.model = model
        self.options = build_options(self.Options, f"attack '{self.name}'", options)
        self.device = next(iter(model.parameters())).device

    @classmethod
    def has_option(cls, key: str) -> bool:
        """True when the attack's Options have the field `key` (e.g. a suite's `floor`)."""
        return key in {f.name for f in dataclasses.fields(cls.Options)}

    @classmethod
    def throughput_options(cls, iterations: int, batch: int) -> dict[str, Any] | None:
        """Options that make one timed run cost `iterations` model iterations per image (None: not timed)."""
        return {"steps": iterations} if cls.has_option("steps") else {}

    @classmethod
    def throughput_iterations(cls, iterations: int) -> int:
        """Iterations per image that a run with `throughput_options(iterations, ...)` performs."""
        return iterations

    # -- public entry point -------------------------------------------------------------------
    def __call__(self, images: torch.Tensor, ctx: AttackContext, index: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """Adversarial versions of `images` (float in [0, 1]); `index` locates them in the query set."""
        if index is None:
            index = torch.arange(len(images))
        generator = torch.Generator(device="cpu").manual_seed(ctx.seed * 100_003 + int(index[0]))
        with eval_mode(self.model):
            adv = self.perturb(images.detach().to(self.device), ctx, index, generator)
        return adv.detach()

    def run(self, images: torch.Tensor, ctx: AttackContext, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Attack a whole query set in batches; returns float images on the CPU.

        With `indices`, only those queries are attacked (a suite's still-robust ones); `images` is
        still the whole query set, which `prepare` may use, and the output holds the selected queries.
        """
        self.prepare(images, ctx)
        indices = torch.arange(len(images)) if indices is None else indices
        out = []
        for start in range(0, len(indices), self.batch_size):
            idx = indices[start:start + self.batch_size]
            batch = images[idx]
            batch = batch.float().div(255.0) if batch.dtype == torch.uint8 else batch
            out.append(self(batch, ctx, idx).cpu())
        return torch.cat(out) if out else images[:0].float()

    def prepare(self, images: torch.Tensor, ctx: AttackContext) -> None:
        """Hook for work done once per query set (universal perturbations, surrogates)."""

    # -- what subclasses override ---------------------------------------------------------------
    def loss(self, emb: torch.Tensor, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor
             ) -> torch.Tensor:
        """Per-sample objective to maximise, given the adversarial embeddings."""
        raise NotImplementedError

    def perturb(self, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        """Gradient ascent on `loss` with the options' schedule: PGD / I-FGSM (fixed step) or APGD."""
        if self.options.schedule == "apgd":
            return apgd_ascent(self, x, ctx, index, generator)
        o = self.options
        x_adv = self.start(x, generator)
        for _ in range(o.steps):
            grad = self.gradient(x_adv, x, ctx, index)
            x_adv = self.project(self.ascend(x_adv, grad, o.step), x)
        return x_adv

    # -- shared machinery -------------------------------------------------------------------------
    def loss_and_gradient(self, x_adv: torch.Tensor, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-sample loss, input gradient, embedding) at `x_adv` through the adaptive forward.

        A randomised defense declares `eot_samples` > 1: loss and gradient are then averaged over
        that many draws (EOT); the embedding returned is the last draw's. Model parameters get no gradient.
        """
        x_adv = x_adv.detach().requires_grad_(True)
        samples = max(1, int(self.model.eot_samples))
        total = None
        for _ in range(samples):
            emb = attack_embed(self.model, x_adv)
            loss = self.loss(emb, x, ctx, index)
            total = loss if total is None else total + loss
        loss = total / samples
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        return loss.detach(), grad, emb.detach()

    def gradient(self, x_adv: torch.Tensor, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor
                 ) -> torch.Tensor:
        """Input gradient of the summed loss at `x_adv` (model parameters get none)."""
        return self.loss_and_gradient(x_adv, x, ctx, index)[1]

    def start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Starting point: a random start in the ball, or a symmetry-breaking nudge."""
        o = self.options
        scale = o.eps if o.random_start else SYMMETRY_BREAK
        noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device) * scale
        if o.norm == Norm.L2.value and o.random_start:
            noise = self._l2_clip(noise, o.eps)
        return self.project(x + noise, x)

    def ascend(self, x_adv: torch.Tensor, grad: torch.Tensor, step: float) -> torch.Tensor:
        """One ascent step: signed (L-inf) or normalised (L2) gradient."""
        if self.options.norm == Norm.LINF.value:
            return x_adv + step * grad.sign()
        norm = grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        return x_adv + step * grad / norm

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Onto the epsilon-ball around x, intersected with [0, 1]."""
        eps = self.options.eps
        if self.options.norm == Norm.LINF.value:
            # in place on the one fresh buffer: the bits of (x + clamp(x_adv - x)).clamp(0, 1), two allocations fewer
            return (x_adv - x).clamp_(-eps, eps).add_(x).clamp_(0.0, 1.0)
        return (x + self._l2_clip(x_adv - x, eps)).clamp(0.0, 1.0)

    @staticmethod
    def _l2_clip(delta: torch.Tensor, eps: float) -> torch.Tensor:
        norm = delta.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        return delta * (eps / norm).clamp(max=1.0)


def sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise squared Euclidean distance d(a, b) = ||a - b||^2."""
    return (a - b).pow(2).sum(-1)


@dataclass
class AttackInfo(EntryInfo):
    """What `list attacks` and the harness know of an attack: its threat model and what it maximises."""

    family: str = ""
    knowledge: str = ""
    side: str = ""
    eps: float | None = None
    steps: int | None = None
    step: float | None = None
    #: what the attack maximises: black-box attacks are compared with white-box ones of the same objective
    objective: str = ""
    #: False keeps an attack out of `--attack all` (the standard suite runs it instead)
    in_all: bool = True
    #: the library that implements it ("art"), empty for our own
    backend: str = ""
    family_note: str = ""


ATTACKS: Registry[type[Attack]] = Registry(
    "attack", "reid_robustness_bench.attacks",
    builtin_modules=("attacks.fgsm", "attacks.ifgsm", "attacks.mifgsm", "attacks.sma", "attacks.fna",
                     "attacks.odfa", "attacks.tma", "attacks.muap", "attacks.transfer", "attacks.query_bb",
                     "attacks.art_attacks", "attacks.apgd_attacks"), info=AttackInfo)


def register_attack(name: str, **meta: Any) -> Callable[[type[Attack]], type[Attack]]:
    """Class decorator recording the threat model as registry metadata."""

    def decorator(cls: type[Attack]) -> type[Attack]:
        cls.name = name
        defaults = cls.Options()
        meta.setdefault("family", cls.family.value)
        meta.setdefault("knowledge", cls.knowledge.value)
        meta.setdefault("side", cls.side.value)
        for key in ("eps", "steps", "step"):
            meta.setdefault(key, getattr(defaults, key) if cls.has_option(key) else None)
        meta.setdefault("summary", (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "")
        meta.setdefault("objective", name)
        return ATTACKS.register(name, **meta)(cls)

    return decorator


def build_attack(name: str, model: nn.Module, **options: Any) -> Attack:
    """Instantiate a registered attack on `model` with typed options."""
    return ATTACKS.get(name)(model, **options)
