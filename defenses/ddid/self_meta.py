"""DDID's self-meta step: identity-disjoint meta-train / meta-test halves of each PK batch.

theta' = theta - alpha grad L(meta-train; theta); minimise L(meta-train; theta) + L(meta-test; theta').
First-order by default (the meta-test gradient taken at theta' is applied to theta);
second-order differentiates through the inner step with `torch.func.functional_call`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

ModelCall = Callable[[torch.Tensor], object]


def identity_split(labels: torch.Tensor, generator: torch.Generator, fraction: float = 0.5
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks of meta-train (`fraction` of the batch's identities, at least one, never all) and
    meta-test samples; no identity is in both."""
    ids = torch.unique(labels)
    order = ids[torch.randperm(len(ids), generator=generator).to(ids.device)]
    train_ids = order[: min(max(1, int(len(ids) * fraction)), max(1, len(ids) - 1))]
    meta_train = torch.isin(labels, train_ids)
    return meta_train, ~meta_train


def meta_update(model: nn.Module, optimizer: torch.optim.Optimizer, alpha: float, second_order: bool,
                meta_train_loss: Callable[[ModelCall], torch.Tensor],
                meta_test_loss: Callable[[ModelCall], torch.Tensor]) -> tuple[float, float]:
    """One optimiser step on L_mtr(theta) + L_mte(theta - alpha grad L_mtr). Returns both losses."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = dict(model.named_buffers())
    l_tr = meta_train_loss(model)
    grads = torch.autograd.grad(l_tr, params, create_graph=second_order, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    if second_order:
        fast = {n: p - alpha * g for n, p, g in zip(names, params, grads, strict=True)}
    else:
        fast = {n: (p - alpha * g).detach().requires_grad_(True) for n, p, g in zip(names, params, grads, strict=True)}

    def fast_model(x: torch.Tensor) -> object:
        return functional_call(model, {**fast, **buffers}, (x,))

    l_te = meta_test_loss(fast_model)
    optimizer.zero_grad(set_to_none=True)
    if second_order:
        (l_tr + l_te).backward()
    else:
        g_te = torch.autograd.grad(l_te, list(fast.values()), allow_unused=True)
        for p, g1, g2 in zip(params, grads, g_te, strict=True):
            p.grad = g1.detach() + (g2 if g2 is not None else 0.0)
    optimizer.step()
    return l_tr.item(), l_te.item()
