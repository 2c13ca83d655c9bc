"""DDID's adversarial learning: a discriminator D tells clean from adversarial embeddings, and the
encoder E is trained to fool it: min_E max_D log D(E(x)) + log(1 - D(E(x_adv))), with the
non-saturating encoder loss -log D(E(x_adv)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureDiscriminator(nn.Module):
    """Tells clean from adversarial embeddings (an MLP)."""
    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats).squeeze(1)


def discriminator_loss(disc: FeatureDiscriminator, clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """D's side of the game on detached embeddings: clean -> 1, adversarial -> 0."""
    real, fake = disc(clean.detach()), disc(adv.detach())
    return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def encoder_loss(disc: FeatureDiscriminator, adv: torch.Tensor) -> torch.Tensor:
    """E's non-saturating side: make adversarial embeddings look clean to D."""
    logits = disc(adv)
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
