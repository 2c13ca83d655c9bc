"""Attacks from the Adversarial Robustness Toolbox (ART) driven through a ReID adapter.

ART has no estimator for embedding models, so `NearestCentroidReid` turns the ReID model into a
classifier over the query identities: logits are minus the squared distances from the embedding
to each identity's clean-query centroid. ART's estimator then wraps that module. Labels (for PGD)
and guide images (for FeatureAdversaries) are always passed explicitly; never y=None, which
would make ART label the inputs with the model's own predictions.

- `art-pgd`: ART ProjectedGradientDescent (Madry et al. ICLR 2018) on the centroid classifier's
  cross-entropy; white-box, L-inf, eps = 8/255, step 1/255, 16 iterations, no random start.
- `art-feature`: ART FeatureAdversaries (Sabour et al. ICLR 2016) in its PyTorch form; pulls the
  embedding of each query towards that of a guide image of the farthest other identity;
  white-box, L-inf, eps = 8/255, step 1/255, 16 iterations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from attacks.base import Attack, AttackContext, attack_embed, register_attack
from attacks.guides import _id_centroids, centroid_labels, centroid_logits, farthest_negative_centroid
from benchmark.core.enums import AttackFamily


class NearestCentroidReid(nn.Module):
    """Embedding model as a classifier over the query identities (see `attacks.guides.centroid_logits`)."""

    def __init__(self, model: nn.Module, ctx: AttackContext) -> None:
        super().__init__()
        self.model = model
        self.ctx = ctx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return centroid_logits(self.ctx, attack_embed(self.model, x))[0]


class Embedder(nn.Module):
    """`forward` = `embed`, so ART's forward hooks on this child see the embedding."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return attack_embed(self.model, x)


class EmbeddingOnly(nn.Module):
    """ART estimator module whose single named child outputs the embedding (layer -1)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.embedder = Embedder(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedder(x)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """ART calls loss.backward(); freezing keeps gradients out of the model's parameters."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def art_classifier(module: nn.Module, input_shape: tuple[int, ...], nb_classes: int, device: torch.device):
    """ART PyTorchClassifier around `module` (cross-entropy loss, inputs in [0, 1])."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=module, loss=nn.CrossEntropyLoss(), input_shape=input_shape,
                             nb_classes=nb_classes, clip_values=(0.0, 1.0),
                             device_type="gpu" if device.type == "cuda" else "cpu")


@register_attack("art-pgd", backend="art", objective="centroid-ce",
                 paper="Madry et al. ICLR 2018, via ART ProjectedGradientDescent")
class ArtPGD(Attack):
    """ART's PGD on a nearest-identity-centroid classifier built from the embedding."""

    family = AttackFamily.GRADIENT

    def perturb(self, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        from art.attacks.evasion import ProjectedGradientDescent

        ids, _ = _id_centroids(ctx)
        labels = centroid_labels(ctx, index).numpy()
        o = self.options
        clf = art_classifier(NearestCentroidReid(self.model, ctx), tuple(x.shape[1:]), len(ids), self.device)
        attack = ProjectedGradientDescent(clf, norm=np.inf if o.norm == "linf" else 2, eps=o.eps,
                                          eps_step=o.step, max_iter=o.steps,
                                          num_random_init=1 if o.random_start else 0,
                                          batch_size=len(x), verbose=False)
        with frozen(self.model):
            adv = attack.generate(x.cpu().numpy().astype(np.float32), y=np.eye(len(ids))[labels])
        return self.project(torch.from_numpy(adv).to(x.device), x)


@register_attack("art-feature", backend="art", family_note="guided", objective="feature-match",
                 paper="Sabour et al. ICLR 2016, via ART FeatureAdversariesPyTorch")
class ArtFeatureAdversaries(Attack):
    """ART's FeatureAdversaries: match the embedding of a guide image of the farthest other ID."""

    family = AttackFamily.GUIDED

    def prepare(self, images: torch.Tensor, ctx: AttackContext) -> None:
        far = farthest_negative_centroid(ctx, torch.arange(len(images)))
        # guide image: the query closest to the farthest identity's centroid
        guide_idx = torch.cdist(far, ctx.query_feats.float()).argmin(1)
        self.guides = images[guide_idx]

    def perturb(self, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        from art.attacks.evasion import FeatureAdversariesPyTorch

        o = self.options
        guides = self.guides[index]
        guides = guides.float().div(255.0) if guides.dtype == torch.uint8 else guides
        clf = art_classifier(EmbeddingOnly(self.model), tuple(x.shape[1:]), self.model_dim(x), self.device)
        attack = FeatureAdversariesPyTorch(clf, delta=float(o.eps), layer=-1, max_iter=o.steps,
                                           step_size=float(o.step), random_start=o.random_start,
                                           batch_size=len(x), verbose=False)
        with frozen(self.model):
            adv = attack.generate(x.cpu().numpy().astype(np.float32), y=guides.cpu().numpy().astype(np.float32))
        return self.project(torch.from_numpy(adv).to(x.device), x)

    def model_dim(self, x: torch.Tensor) -> int:
        """Embedding size of the model under attack."""
        with torch.no_grad():
            return int(self.model.embed(x[:1]).shape[1])
