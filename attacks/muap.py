"""Universal adversarial perturbation for ReID (MUAP; Li et al., "Universal Adversarial Perturbations
Against Person Re-Identification", 2019; Ding et al. 2021).

Threat model: white-box, L-inf, query side, universal: ONE perturbation is learned on the
*training* identities only (asserted disjoint from the test identities) and then added to every
unseen test query. Defaults: eps = 8/255, step 1/255, 48 signed ascent steps over batches of
64 training images. Objective: maximise the mean d(f(x + delta), f(x)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import Attack, AttackContext, AttackOptions, attack_embed, register_attack, sq_dist
from benchmark.core.enums import AttackFamily
from benchmark.core.errors import BenchmarkError
from benchmark.core.options import option
from benchmark.data import assert_identity_disjoint
from benchmark.models import eval_mode


@dataclass(frozen=True)
class MUAPOptions(AttackOptions):
    """Ascent steps and batch size on the training identities."""
    steps: int = option(48, low=1, high=100_000)
    batch: int = option(64, low=1, high=100_000)
    random_start: bool = True


@register_attack("muap", objective="self-distance",
                 paper="Li et al. 2019; Ding et al. 2021 (universal ReID perturbations)")
class UniversalPerturbation(Attack):
    """One image-agnostic perturbation learned on training IDs, applied to unseen test queries."""

    uses_training_split = True

    @classmethod
    def throughput_options(cls, iterations: int, batch: int) -> dict | None:
        """Ascent steps over batches of the timed batch size."""
        return {"steps": iterations, "batch": batch}

    family = AttackFamily.UNIVERSAL
    Options = MUAPOptions

    def prepare(self, images: torch.Tensor, ctx: AttackContext) -> None:
        if ctx.train_images is None or ctx.train_pids is None:
            raise BenchmarkError("attack 'muap' needs the training split in its context")
        assert_identity_disjoint({int(p) for p in ctx.train_pids if p > 0},
                                 {int(p) for p in ctx.query_pids if p > 0}, "muap training identities")
        o = self.options
        g = torch.Generator().manual_seed(ctx.seed + 11)
        shape = (1, *images.shape[1:])
        delta = (torch.rand(shape, generator=g) * 2 - 1) * (o.eps if o.random_start else 1e-4)
        delta = delta.to(self.device)
        with eval_mode(self.model):
            for _ in range(o.steps):
                idx = torch.randint(len(ctx.train_images), (min(o.batch, len(ctx.train_images)),), generator=g)
                x = ctx.train_images[idx].to(self.device).float().div(255.0)
                with torch.no_grad():
                    clean = self.model.embed(x)
                d = delta.detach().requires_grad_(True)
                loss = sq_dist(attack_embed(self.model, (x + d).clamp(0, 1)), clean).mean()
                (grad,) = torch.autograd.grad(loss, d)
                delta = (delta + o.step * grad.sign()).clamp(-o.eps, o.eps)
        self.delta = delta.detach()

    def perturb(self, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        return self.project(x + self.delta, x)
