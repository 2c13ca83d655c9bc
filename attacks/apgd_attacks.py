"""The APGD attacks of the standard suite: five metric losses under the APGD schedule (`attacks.apgd`).

Threat model: white-box, L-inf, query side; the iterate kept per query is the one with the lowest
AP against the clean gallery (the white-box evaluator's oracle, as AutoAttack keeps misclassified
points). Defaults: eps = 8/255, initial step 2ε, 100 iterations, momentum 0.75, random start,
one run (`restarts` adds more). Losses:

- `apgd-fna`, `apgd-sma`, `apgd-ifgsm`: the losses of fna, sma and ifgsm (Bouniot et al. 2020;
  Bai et al. 2020);
- `apgd-ce`: cross-entropy of the nearest-centroid classifier over the query identities' clean
  centroids with a temperature (the objective art-pgd runs through ART);
- `apgd-margin`: retrieval margin on the clean gallery (true matches pushed away, the nearest wrong
  items pulled in), the ReID counterpart of DLR;
- `apgd-sap`: the negative smoothed AP against the clean gallery (Brown et al. ECCV 2020): the
  metric the benchmark reports, relaxed with a sigmoid of temperature 0.05 on distances divided by
  the query's mean gallery distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.apgd import APGDOptions
from attacks.base import Attack, AttackContext, register_attack
from attacks.fna import FurthestNegativeAttack
from attacks.ifgsm import MetricIFGSM
from attacks.objectives import centroid_cross_entropy, retrieval_margin, smoothed_ap
from attacks.sma import SelfMetricAttack
from benchmark.core.enums import AttackFamily
from benchmark.core.options import option

PAPER = "Croce & Hein ICML 2020 (APGD)"


@register_attack("apgd-fna", paper=f"{PAPER}; Bouniot et al. CVPRW 2020", objective="fna", in_all=False)
class APGDFurthestNegative(FurthestNegativeAttack):
    """APGD on the furthest-negative loss."""
    Options = APGDOptions


@register_attack("apgd-sma", paper=f"{PAPER}; Bouniot et al. CVPRW 2020", objective="self-distance", in_all=False)
class APGDSelfMetric(SelfMetricAttack):
    """APGD on the self-metric loss d(f(x_hat), f(x))."""
    Options = APGDOptions


@register_attack("apgd-ifgsm", paper=f"{PAPER}; Bai et al. TPAMI 2020", objective="push", in_all=False)
class APGDMetricIFGSM(MetricIFGSM):
    """APGD on the metric I-FGSM loss (push from all same-ID query features)."""
    Options = APGDOptions


@register_attack("apgd-ce", paper=f"{PAPER}; nearest-centroid cross-entropy", objective="centroid-ce",
                 in_all=False)
class APGDCentroidCE(Attack):
    """APGD on the cross-entropy of a nearest-identity-centroid classifier."""
    family = AttackFamily.GRADIENT
    Options = APGDOptions

    def loss(self, emb: torch.Tensor, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
        return centroid_cross_entropy(emb, ctx, index)


@register_attack("apgd-margin", paper=f"{PAPER}; retrieval margin (DLR counterpart)", objective="margin",
                 in_all=False)
class APGDRetrievalMargin(Attack):
    """APGD on the retrieval margin: true gallery matches pushed away, nearest wrong items pulled in."""
    family = AttackFamily.GUIDED
    Options = APGDOptions

    def loss(self, emb: torch.Tensor, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
        return retrieval_margin(emb, ctx, index)


@dataclass(frozen=True)
class SmoothedAPOptions(APGDOptions):
    """APGD options plus the sigmoid temperature of the smoothed AP (on distances over their mean)."""
    temperature: float = option(0.05, above=0, high=10)


@register_attack("apgd-sap", paper=f"{PAPER}; Brown et al. ECCV 2020 (Smooth-AP)", objective="smoothed-ap",
                 in_all=False)
class APGDSmoothedAP(Attack):
    """APGD on the negative smoothed AP of the query against the clean gallery: it targets the metric itself."""
    family = AttackFamily.GUIDED
    Options = SmoothedAPOptions

    def loss(self, emb: torch.Tensor, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
        return -smoothed_ap(emb, ctx, index, self.options.temperature)
