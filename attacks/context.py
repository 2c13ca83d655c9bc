"""What every ReID attack shares: its threat model and schedule options, and the context it attacks in."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from benchmark.core.enums import Norm
from benchmark.core.options import option


@dataclass(frozen=True)
class AttackOptions:
    """Threat model and schedule shared by iterative attacks (ε and norm are set by the run)."""
    eps: float = option(8 / 255, above=0, high=1)
    step: float = option(1 / 255, above=0, high=1)
    steps: int = option(16, low=1, high=100_000)
    random_start: bool = False
    norm: str = option(Norm.LINF.value, choices=('linf', 'l2'))
    #: ascent schedule of a white-box attack: "pgd" (fixed step) or "apgd" (`attacks.apgd`)
    schedule: str = option("pgd", choices=('pgd', 'apgd'))


@dataclass
class AttackContext:
    """What a ReID attacker may know about the queries it perturbs.

    `query_feats` are the target model's clean query embeddings (white-box attackers compute them,
    black-box ones are given their own surrogate's); guides are derived from them.
    """

    query_pids: torch.Tensor
    query_feats: torch.Tensor
    seed: int = 0
    gallery_feats: torch.Tensor | None = None
    gallery_pids: torch.Tensor | None = None
    #: training split (images uint8, pids) for attacks that learn on training identities only
    train_images: torch.Tensor | None = None
    train_pids: torch.Tensor | None = None
    #: builds an undefended surrogate model of a given backbone (cached) for transfer attacks
    surrogate: Callable[[str], nn.Module] | None = None
    target_backbone: str | None = None
    #: cameras of the queries and the gallery and the distance: what scoring a query needs (see `query_ap`)
    query_camids: torch.Tensor | None = None
    gallery_camids: torch.Tensor | None = None
    #: per query of the whole set, where an APGD run with `start="given"` starts (a suite's worst images so far)
    start_images: torch.Tensor | None = None
    metric: str = "euclidean"
    #: filled by attacks that report extra numbers (queries used, surrogate name, ...)
    report: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: guide tensors computed once per query set (see attacks.guides)
    cache: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)


    def can_score(self) -> bool:
        """True when the context holds what scoring a query's retrieval needs (the clean gallery)."""
        return self.gallery_feats is not None and self.query_camids is not None and self.gallery_camids is not None

    def _scorer(self) -> Any:
        from benchmark.core.metrics import QueryScorer

        if "scorer" not in self.cache:
            self.cache["scorer"] = QueryScorer(self.gallery_feats, self.gallery_pids, self.gallery_camids, self.metric)
        return self.cache["scorer"]

    def query_ap(self, emb: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """AP (fraction) of each query `index` given its embedding `emb`; NaN where it has no valid positive."""
        idx = index.cpu()
        return self._scorer().ap(emb, self.query_pids[idx], self.query_camids[idx])

    def lowest_ap(self, index: torch.Tensor) -> torch.Tensor:
        """The lowest AP each query `index` can reach (all its true matches ranked last); NaN without one."""
        idx = index.cpu()
        return self._scorer().lowest_ap(self.query_pids[idx], self.query_camids[idx])


class AttackTarget(Protocol):
    """What attacks need of the model they attack (the harness gives them an `AttackView`).

    `embed(x)` is what the defense computes; `attack_embed(x)` what white-box attacks differentiate
    (the defense's adaptive forward: true value forward, declared surrogate backward); `eot_samples`
    how many draws of a randomised defense each gradient averages (1: deterministic).
    """

    eot_samples: int

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings (B x D) of images in [0, 1]."""

    def attack_embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding white-box attacks differentiate."""


class Ascender(Protocol):
    """What an ascent schedule (PGD, APGD) needs of an attack: its options, loss gradient, start and projection."""

    options: AttackOptions

    def loss_and_gradient(self, x_adv: torch.Tensor, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample loss and its input gradient at `x_adv`."""

    def start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The first iterate."""

    def ascend(self, x_adv: torch.Tensor, grad: torch.Tensor, step: float) -> torch.Tensor:
        """One step up the gradient."""

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Back into the ε-ball around `x`, intersected with [0, 1]."""
