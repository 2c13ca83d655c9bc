"""ReID model: backbone -> global average pooling -> BNNeck embedding -> ID classifier.

Inputs are images in [0, 1]; ImageNet normalisation happens inside the model so attacks and
defenses always work in pixel space.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from benchmark.core.atomic import atomic_write_text, save_tensors
from benchmark.core.errors import CorruptCacheError
from benchmark.core.hashing import sha256_file
from benchmark.models.backbones import build_backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """Backbone, number of training identities and input size."""
    backbone: str
    num_classes: int
    height: int = 128
    width: int = 64


class ReidOutput(NamedTuple):
    """Pooled features, BNNeck embedding and ID logits."""
    features: torch.Tensor   # pooled, before BNNeck: what the triplet loss sees
    embedding: torch.Tensor  # after BNNeck: the test-time descriptor
    logits: torch.Tensor


class ReidModel(nn.Module):
    """Backbone -> pooling -> BNNeck embedding -> ID classifier; takes images in [0, 1]."""
    def __init__(self, config: ModelConfig, backbone_weights: str | Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone, dim = build_backbone(config.backbone, backbone_weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.bnneck = nn.BatchNorm1d(dim)
        self.bnneck.bias.requires_grad_(False)  # BNNeck (Luo et al. 2019): no shift before the classifier
        self.classifier = nn.Linear(dim, config.num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.embedding_dim = dim

    def forward(self, x: torch.Tensor) -> ReidOutput:
        fmap = self.backbone((x - self.mean) / self.std)
        feats = fmap.mean(dim=(2, 3))
        emb = self.bnneck(feats)
        return ReidOutput(feats, emb, self.classifier(emb))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Test-time embedding of images in [0, 1]."""
        return self.bnneck(self.backbone((x - self.mean) / self.std).mean(dim=(2, 3)))

    def attack_embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding white-box attacks differentiate: the test-time one (every step has a gradient)."""
        return self.embed(x)

    #: draws each attack gradient averages (deterministic model: one)
    eot_samples = 1

    def save(self, folder: str | Path) -> str:
        """Write model.safetensors + model.json; returns the sha256 of the weights file."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_tensors(state, folder / "model.safetensors")
        atomic_write_text(folder / "model.json", json.dumps(asdict(self.config), indent=2))
        return sha256_file(folder / "model.safetensors")

    @classmethod
    def load(cls, folder: str | Path, map_location: str | torch.device = "cpu",
             expected_sha256: str | None = None) -> ReidModel:
        """Load a saved model; raises CorruptCacheError when files are missing, unreadable or altered."""
        folder = Path(folder)
        weights = folder / "model.safetensors"
        try:
            if expected_sha256 is not None and sha256_file(weights) != expected_sha256:
                raise CorruptCacheError(f"{weights} does not match the sha256 recorded when it was written")
            model = cls(ModelConfig(**json.loads((folder / "model.json").read_text())))
            model.load_state_dict(load_file(str(weights), device=str(map_location)))
        except CorruptCacheError:
            raise
        except (OSError, ValueError, TypeError, RuntimeError, SafetensorError) as exc:
            raise CorruptCacheError(f"cannot load the model in {folder} ({type(exc).__name__}: {exc})") from None
        return model

    def non_finite(self) -> list[str]:
        """Names of parameters and buffers holding NaN or infinity (a diverged training)."""
        return [name for name, t in (*self.named_parameters(), *self.named_buffers())
                if t.is_floating_point() and not torch.isfinite(t).all()]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put `model` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def extract_embeddings(model: nn.Module, images: torch.Tensor, batch_size: int = 256,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """Embeddings of uint8 or float images, batched, in eval mode (mode restored afterwards)."""
    out = []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device)
            if batch.dtype == torch.uint8:
                batch = batch.float().div_(255.0)
            out.append(model.embed(batch).float().cpu())
    return torch.cat(out) if out else torch.empty(0)
