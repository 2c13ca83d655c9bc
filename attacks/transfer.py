"""Transfer attack: metric MI-FGSM crafted on an undefended surrogate of another backbone
(Dong et al. CVPR 2018 momentum for transferability; ReID setting of Wang et al. 2020).

Threat model: transfer (black-box for the target), L-inf, query side. The surrogate is trained
without defense on the same training split; its own clean query features give the guides.
Defaults: eps = 8/255, step 1/255, 16 iterations, momentum 1, surrogate backbone 'auto' (a small
backbone different from the target's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import Attack, AttackContext, AttackOptions, register_attack
from attacks.mifgsm import MetricMIFGSM
from benchmark.enums import AttackFamily, Knowledge
from benchmark.errors import BenchmarkError
from benchmark.models import extract_embeddings

SURROGATE_CHOICES = ("reidnet-t", "reidnet-s")


@dataclass(frozen=True)
class TransferOptions(AttackOptions):
    """Surrogate backbone and the momentum of the MI-FGSM run on it."""
    momentum: float = 1.0
    surrogate_backbone: str = "auto"


@register_attack("transfer", paper="Dong et al. CVPR 2018; Wang et al. 2020 (transferable ReID attacks)")
class TransferAttack(Attack):
    """Adversarial queries crafted on an undefended surrogate of a different backbone."""

    @classmethod
    def throughput_options(cls, iterations: int, batch: int) -> dict | None:
        """Not timed: its cost is mifgsm's on the surrogate plus one surrogate training."""
        return None

    family = AttackFamily.TRANSFER
    knowledge = Knowledge.TRANSFER
    Options = TransferOptions

    def prepare(self, images: torch.Tensor, ctx: AttackContext) -> None:
        if ctx.surrogate is None:
            raise BenchmarkError("attack 'transfer' needs a surrogate builder in its context")
        backbone = self.options.surrogate_backbone
        if backbone == "auto":
            backbone = next(b for b in SURROGATE_CHOICES if b != ctx.target_backbone)
        surrogate = ctx.surrogate(backbone).to(self.device).eval()
        feats = extract_embeddings(surrogate, images, device=self.device)
        self.sub_ctx = AttackContext(query_pids=ctx.query_pids, query_feats=feats, seed=ctx.seed)
        o = self.options
        self.inner = MetricMIFGSM(surrogate, eps=o.eps, step=o.step, steps=o.steps, momentum=o.momentum,
                                  norm=o.norm)
        ctx.report["surrogate"] = backbone

    def perturb(self, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        return self.inner(x, self.sub_ctx, index)
