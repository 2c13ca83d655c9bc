"""Transfer attack: metric MI-FGSM with input diversity on an ensemble of undefended surrogates
(Dong et al. CVPR 2018 momentum; Xie et al. CVPR 2019 input diversity; Liu et al. ICLR 2017
ensembles; ReID setting of Wang et al. 2020).

Threat model: transfer (black-box for the target), L-inf, query side. The surrogates are trained
without defense on the same training split and never share the target's weights: by default
('auto') a different small backbone (seed s) and the target's backbone trained from another seed
(s + 1). Each surrogate's own clean query features give its guides; the loss is the mean of the
surrogates' push losses (metric I-FGSM's objective). Input diversity: with probability
`diversity`, each step sees the batch shrunk by a random factor in [0.9, 1) and padded back at a
random offset. Defaults: eps = 8/255, step 1/255, 16 iterations, momentum 1, diversity 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from attacks.base import Attack, AttackContext, AttackOptions, register_attack
from attacks.ifgsm import push_loss
from benchmark.core.enums import AttackFamily, Knowledge
from benchmark.core.errors import BenchmarkError
from benchmark.core.options import option
from benchmark.models import extract_embeddings

SURROGATE_CHOICES = ("reidnet-t", "reidnet-s")


@dataclass(frozen=True)
class TransferOptions(AttackOptions):
    """Surrogates ('auto', or backbone[@seed-offset] joined by '+'), momentum and input-diversity probability."""
    momentum: float = option(1.0, low=0, high=100)
    surrogates: str = "auto"
    diversity: float = option(0.5, low=0, high=1)


def parse_surrogates(text: str, target_backbone: str | None) -> list[tuple[str, int]]:
    """[(backbone, seed offset)] of a surrogate list; 'auto' = another small backbone and the target's, seed + 1."""
    if text == "auto":
        other = next(b for b in SURROGATE_CHOICES if b != target_backbone)
        return [(other, 0), (target_backbone or SURROGATE_CHOICES[1], 1)]
    out = []
    for part in text.split("+"):
        backbone, _, offset = part.partition("@")
        out.append((backbone, int(offset or 0)))
    return out


def diverse(x: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Input diversity: with `probability`, shrink by a random factor in [0.9, 1) and pad back at a random offset."""
    if float(torch.rand((), generator=generator)) >= probability:
        return x
    h, w = x.shape[-2:]
    scale = 0.9 + 0.1 * float(torch.rand((), generator=generator))
    nh, nw = max(1, int(h * scale)), max(1, int(w * scale))
    top = int(torch.randint(0, h - nh + 1, (), generator=generator))
    left = int(torch.randint(0, w - nw + 1, (), generator=generator))
    small = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    return F.pad(small, (left, w - nw - left, top, h - nh - top))


@register_attack("transfer", objective="push",
                 paper="Dong et al. CVPR 2018; Xie et al. CVPR 2019; Wang et al. 2020 (transferable ReID attacks)")
class TransferAttack(Attack):
    """Adversarial queries crafted on an ensemble of undefended surrogates with input diversity."""

    @classmethod
    def throughput_options(cls, iterations: int, batch: int) -> dict | None:
        """Not timed: its cost is MI-FGSM on the surrogates plus their training."""
        return None

    family = AttackFamily.TRANSFER
    knowledge = Knowledge.TRANSFER
    Options = TransferOptions

    def prepare(self, images: torch.Tensor, ctx: AttackContext) -> None:
        if ctx.surrogate is None:
            raise BenchmarkError("attack 'transfer' needs a surrogate builder in its context")
        self.surrogates, self.sub_ctxs, names = [], [], []
        for backbone, offset in parse_surrogates(self.options.surrogates, ctx.target_backbone):
            model = ctx.surrogate(backbone, offset).to(self.device).eval()
            feats = extract_embeddings(model, images, device=self.device)
            self.surrogates.append(model)
            self.sub_ctxs.append(AttackContext(query_pids=ctx.query_pids, query_feats=feats, seed=ctx.seed))
            names.append(f"{backbone}@seed+{offset}")
        ctx.report["surrogate"] = "+".join(names)

    def perturb(self, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        o = self.options
        x_adv = self.start(x, generator)
        velocity = torch.zeros_like(x)
        for _ in range(o.steps):
            x_req = x_adv.detach().requires_grad_(True)
            loss = sum(push_loss(model.embed(diverse(x_req, o.diversity, generator)), sub, index).sum()
                       for model, sub in zip(self.surrogates, self.sub_ctxs, strict=True)) / len(self.surrogates)
            (grad,) = torch.autograd.grad(loss, x_req)
            grad = grad / grad.abs().flatten(1).sum(1).clamp(min=1e-12).view(-1, 1, 1, 1)
            velocity = o.momentum * velocity + grad
            x_adv = self.project(self.ascend(x_adv, velocity, o.step), x)
        return x_adv
