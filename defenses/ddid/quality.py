"""Quality control of DDID's phase 1 (the paper leaves it open): does a generated image show its identity
in its target camera?

- Identity fidelity: the warm-start model's top-1 on generated images against their conditioning
  identity, next to its top-1 on real training images at the ReID resolution and at the generator's
  (down and up again), so the resolution loss is not counted against the generator.
- Camera fidelity: a small camera classifier trained on real training images at half resolution (80 %; the rest
  measures its accuracy on real images), top-1 on generated images against their target camera.
- The identity filter keeps only the generated images the warm-start model assigns to their identity.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.core.sampling import augment
from benchmark.data import SplitTensors
from benchmark.models import ModelConfig, ReidModel, eval_mode
from defenses.ddid.balancing import DiffusionConfig, at_generator_resolution

CAMERA_BACKBONE = "reidnet-t"
CAMERA_STEPS = 200
CAMERA_BATCH = 64


@torch.no_grad()
def predictions(model: nn.Module, images: torch.Tensor, device: torch.device, batch: int = 128) -> torch.Tensor:
    """Arg-max class index of `model`'s logits on uint8 images, in eval mode."""
    out = []
    with eval_mode(model):
        for start in range(0, len(images), batch):
            x = images[start:start + batch].float().div(255.0).to(device)
            out.append(model(x).logits.argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def assigned_to_identity(model: nn.Module, train: SplitTensors, images: torch.Tensor, pids: torch.Tensor,
                         device: torch.device) -> torch.Tensor:
    """Boolean mask: the model's top-1 identity (over the training identities) equals `pids`."""
    classes = torch.unique(train.pids)
    return classes[predictions(model, images, device)] == pids


class HalfResolution(nn.Module):
    """Area-downsamples its input by 2 before the wrapped model: a camera shows in light and background,
    which survive at half resolution, and the classifier trains four times faster."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> object:
        return self.model(F.interpolate(x, scale_factor=0.5, mode="area"))


def camera_classifier(train: SplitTensors, device: torch.device, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """A small CNN trained to tell the training split's cameras apart; returns it and the held-out indices."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=g)
    held_out, fit = order[: len(order) // 5], order[len(order) // 5:]
    cams = torch.unique(train.camids)
    labels = torch.searchsorted(cams, train.camids)
    height, width = train.images.shape[2:]
    # seeded on a forked RNG: quality control must change nothing the caller draws afterwards (DDID's phase 2)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = HalfResolution(ReidModel(ModelConfig(CAMERA_BACKBONE, len(cams), height // 2, width // 2)))
        model = model.to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(CAMERA_STEPS):
            idx = fit[torch.randint(len(fit), (CAMERA_BATCH,), generator=g)]
            x = augment(train.float_images(idx).to(device), g)
            loss = F.cross_entropy(model(x).logits, labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval(), held_out


def percent(hits: torch.Tensor) -> float:
    """The share of True in a boolean tensor, in percent."""
    return 100.0 * float(hits.float().mean())


def phase1_quality(warm_model: nn.Module, train: SplitTensors, generated: SplitTensors, cfg: DiffusionConfig,
                   device: torch.device, seed: int) -> dict[str, Any]:
    """Identity and camera fidelity of generated images (percent), with their real-image references."""
    if not len(generated):
        return {"generated": 0}
    g = torch.Generator().manual_seed(seed)
    real = torch.randperm(len(train), generator=g)[: max(len(generated), 200)]
    keep = assigned_to_identity(warm_model, train, generated.images, generated.pids, device)

    def id_top1(images: torch.Tensor, pids: torch.Tensor) -> float:
        return percent(assigned_to_identity(warm_model, train, images, pids, device))

    cam_model, held_out = camera_classifier(train, device, seed)
    cams = torch.unique(train.camids)

    def cam_hits(images: torch.Tensor, camids: torch.Tensor) -> torch.Tensor:
        return cams[predictions(cam_model, images, device)] == camids

    generated_hits = cam_hits(generated.images, generated.camids)
    # what the identity filter would leave: its identity fidelity is 100 % by construction, its camera's is not
    kept = {"cam_fidelity_kept": percent(generated_hits[keep])} if keep.any() else {}
    return {"generated": len(generated), "id_fidelity": percent(keep),
            "id_top1_real": id_top1(train.images[real], train.pids[real]),
            "id_top1_real_at_generator_res": id_top1(at_generator_resolution(train.images[real], cfg),
                                                     train.pids[real]),
            "cam_fidelity": percent(generated_hits), **kept,
            "cam_top1_real_held_out": percent(cam_hits(train.images[held_out], train.camids[held_out])),
            "cam_chance": 100.0 / len(cams), "kept_by_id_filter": int(keep.sum()),
            "_keep": keep}
