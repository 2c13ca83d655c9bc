"""ReID training losses: label-smoothed / soft-target cross-entropy and batch-hard triplet."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a probability vector per sample."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def smooth_labels(labels: torch.Tensor, num_classes: int, true_mass: float) -> torch.Tensor:
    """phi(y, lambda): mass `true_mass` on the true class, the rest spread over the others."""
    off = (1.0 - true_mass) / max(1, num_classes - 1)
    out = torch.full((len(labels), num_classes), off, device=labels.device)
    return out.scatter_(1, labels[:, None], true_mass)


def pairwise_euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances between rows (numerically safe at zero)."""
    d = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None] - 2.0 * a @ b.T
    return d.clamp(min=1e-12).sqrt()


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3,
                       anchors: torch.Tensor | None = None) -> torch.Tensor:
    """Hermans et al. 2017: hardest positive and hardest negative per anchor in the batch.

    `anchors` (optional) are features compared against `features` (e.g. adversarial anchors
    against clean batch members); by default the batch is compared with itself.
    """
    anchors = features if anchors is None else anchors
    dist = pairwise_euclidean(anchors, features)
    same = labels[:, None] == labels[None]
    hardest_pos = dist.masked_fill(~same, float("-inf")).amax(1)
    hardest_neg = dist.masked_fill(same, float("inf")).amin(1)
    return F.relu(hardest_pos - hardest_neg + margin).mean()
