"""PK batches (P identities x K images each) and cheap batched augmentation."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def pk_batches(labels: torch.Tensor, p: int, k: int, generator: torch.Generator,
               num_batches: int | None = None) -> Iterator[torch.Tensor]:
    """Yield index tensors of P identities x K images (sampled with replacement below K)."""
    ids = torch.unique(labels)
    by_id = [torch.nonzero(labels == i).flatten() for i in ids]
    p = min(p, len(ids))
    if num_batches is None:
        num_batches = max(1, len(labels) // (p * k))
    order = torch.empty(0, dtype=torch.long)
    for _ in range(num_batches):
        if len(order) < p:
            order = torch.cat([order, torch.randperm(len(ids), generator=generator)])
        chosen, order = order[:p], order[p:]
        picks = []
        for c in chosen.tolist():
            members = by_id[c]
            if len(members) >= k:
                picks.append(members[torch.randperm(len(members), generator=generator)[:k]])
            else:
                picks.append(members[torch.randint(len(members), (k,), generator=generator)])
        yield torch.cat(picks)


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 6) -> torch.Tensor:
    """Random horizontal flip and random pad-and-crop, on a float batch in [0, 1]."""
    n, _, h, w = images.shape
    flip = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None].to(images.device), images.flip(3), images)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).to(images.device)
    cols = (dx[:, None] + torch.arange(w)[None]).to(images.device)
    idx_n = torch.arange(n, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()
