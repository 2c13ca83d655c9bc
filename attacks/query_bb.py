"""Score-based black-box attack: Square Attack (Andriushchenko et al., ECCV 2020) on the embedding distance.

Threat model: score-based black box, L-inf, query side. The attacker sees only the distance
between the model's embeddings of its candidate and of the clean query (forward passes, no
gradients). Defaults: eps = 8/255, a budget of 200 queries per image (counted and reported),
initial square fraction p = 0.1 halved four times over the budget. Each iteration changes one
random square per image to fresh +-eps values and keeps it only if the distance grew.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import Attack, AttackContext, AttackOptions, register_attack, sq_dist
from benchmark.core.enums import AttackFamily, Knowledge
from benchmark.core.options import option


@dataclass(frozen=True)
class SquareOptions(AttackOptions):
    """Query budget per image and the initial square fraction."""
    queries: int = option(200, low=1, high=10_000_000)
    p_init: float = option(0.1, above=0, high=1)


@register_attack("query-bb", paper="Andriushchenko et al. ECCV 2020 (Square Attack)", objective="self-distance")
class SquareQueryAttack(Attack):
    """Random-search Square Attack maximising the embedding distance with a counted query budget."""

    @classmethod
    def throughput_options(cls, iterations: int, batch: int) -> dict | None:
        """One iteration is one query of the batch."""
        return {"queries": iterations}

    family = AttackFamily.QUERY
    knowledge = Knowledge.SCORE_BASED
    Options = SquareOptions

    @torch.no_grad()
    def perturb(self, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        o = self.options
        n, c, h, w = x.shape
        clean = self.model.embed(x)
        queries = 1
        stripes = torch.randint(0, 2, (n, c, 1, w), generator=generator).float() * 2 - 1
        best = self.project(x + o.eps * stripes.to(x.device), x)
        best_loss = sq_dist(self.model.embed(best), clean)
        queries += 1
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        for i in range(o.queries - queries):
            p = o.p_init * 0.5 ** int(4 * i / max(o.queries, 1))
            side = max(1, int(round((p * h * w) ** 0.5)))
            top = torch.randint(0, h - side + 1, (n, 1, 1), generator=generator).to(x.device)
            left = torch.randint(0, w - side + 1, (n, 1, 1), generator=generator).to(x.device)
            inside = ((rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side))[:, None]
            signs = (torch.randint(0, 2, (n, c, 1, 1), generator=generator).float() * 2 - 1).to(x.device)
            candidate = self.project(torch.where(inside, x + o.eps * signs, best), x)
            loss = sq_dist(self.model.embed(candidate), clean)
            better = loss > best_loss
            best = torch.where(better[:, None, None, None], candidate, best)
            best_loss = torch.where(better, loss, best_loss)
            queries += 1
        ctx.report["queries_per_image"] = queries
        return best
