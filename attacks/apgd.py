"""APGD: the step-size-free ascent schedule of AutoAttack (Croce & Hein, ICML 2020), for metric losses.

A second ascent schedule of the base class (`schedule="apgd"`), not a separate loop per attack:
any white-box attack's `loss` runs under it. Per sample:

- the step starts at 2ε (`step`, scaled with ε by the harness); the first move is a plain signed
  step, later ones add momentum: x_{k+1} = P(x_k + α (z_{k+1} - x_k) + (1 - α)(x_k - x_{k-1})),
  z_{k+1} = P(x_k + η sign ∇), α = `momentum` (0.75);
- at checkpoints w_j (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) of the
  iterations) the step halves and the iterate returns to the best-loss point when fewer than
  `rho` of the steps since the last checkpoint raised the loss, or when neither the step nor the
  best loss changed since then;
- the best-loss iterate is kept; where the context can score retrieval (clean gallery known to the
  white-box attacker), the iterate with the lowest AP seen is returned instead, as AutoAttack keeps
  any misclassified iterate;
- a query whose AP has reached `floor` stops being iterated (its best iterate is kept): a suite
  spends its budget on queries not yet broken; with `floor_above_lowest` the floor counts from the
  query's lowest reachable AP (a query with many true matches can never fall near 0);
- `restarts` > 1 adds runs from random starts on the queries still above the floor, keeping per
  query the restart with the lowest AP; `start="given"` starts the first run from the context's
  `start_images` (a suite's convergence check restarts from the worst images it found).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attacks.context import Ascender, AttackContext, AttackOptions
from benchmark.core.enums import Norm
from benchmark.core.options import option


@dataclass(frozen=True)
class APGDOptions(AttackOptions):
    """APGD schedule: 100 iterations, initial step 2ε, momentum 0.75, checkpoint ratio 0.75, one run."""
    step: float = option(16 / 255, above=0, high=1)
    steps: int = option(100, low=1, high=100_000)
    random_start: bool = True
    schedule: str = option("apgd", choices=('pgd', 'apgd'))
    momentum: float = option(0.75, low=0, high=1)
    rho: float = option(0.75, above=0, high=1)
    restarts: int = option(1, low=1, high=1000)
    #: AP (fraction) at or below which a query counts as broken and is no longer iterated; 0 = never
    floor: float = option(0.0, low=0, high=1)
    #: the floor counts from each query's lowest reachable AP (all its true matches ranked last), not from 0
    floor_above_lowest: bool = False
    #: the first run starts at a random point of the ball, or at the context's `start_images` (a restart
    #: from the worst images a suite has found)
    start: str = option("random", choices=("random", "given"))


def checkpoints(steps: int) -> list[int]:
    """Iterations after which the step-size condition is checked (Croce & Hein's w_j)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    marks = {math.ceil(round(q * steps, 6)) for q in p[1:]}
    return sorted({m for m in marks if m < steps} | {steps})


def _scores(attack: Ascender, ctx: AttackContext, emb: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """AP per sample where the context can score retrieval, else +inf (selection falls back to the loss)."""
    if not ctx.can_score():
        return torch.full((len(emb),), math.inf, dtype=torch.float64)
    ap = ctx.query_ap(emb, index)
    return torch.where(torch.isnan(ap), torch.full_like(ap, math.inf), ap)


def floors(options: APGDOptions, ctx: AttackContext, index: torch.Tensor) -> torch.Tensor:
    """Per query, the AP at or below which it is no longer iterated (float64, CPU)."""
    floor = torch.full((len(index),), float(options.floor), dtype=torch.float64)
    if options.floor_above_lowest and options.floor > 0 and ctx.can_score():
        floor += ctx.lowest_ap(index).nan_to_num(0.0)
    return floor


def _one_run(attack: Ascender, x: torch.Tensor, x0: torch.Tensor, ctx: AttackContext, index: torch.Tensor,
             floor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run from `x0`, queries at or below `floor` left alone; returns (selected iterate, its AP or +inf)."""
    o = attack.options
    n = len(x)
    dev = x.device
    step = torch.full((n, 1, 1, 1), float(o.step), device=dev)
    marks = set(checkpoints(o.steps))
    loss, grad, emb = attack.loss_and_gradient(x0, x, ctx, index)
    ap = _scores(attack, ctx, emb, index)
    x_cur, x_prev = x0.clone(), x0.clone()
    x_best, loss_best, grad_best = x0.clone(), loss.clone(), grad.clone()
    x_sel, ap_sel = x0.clone(), ap.clone()
    loss_cur = loss.clone()
    successes = torch.zeros(n, device=dev)
    loss_at_mark = loss_best.clone()
    reduced_at_mark = torch.ones(n, dtype=torch.bool, device=dev)
    last_mark = 0
    active = (ap_sel > floor).to(dev)
    for k in range(o.steps):
        rows = active.nonzero().flatten()
        if len(rows):
            # every sample still active: the batch's own tensors, no copies (rows=None)
            rows = None if len(rows) == n else rows
            xa, xc, idx = _rows(x, rows), _rows(x_cur, rows), _rows(index, rows)
            z = attack.project(_ascent(attack, xc, _rows(grad, rows), _rows(step, rows)), xa)
            if k > 0:
                z = attack.project(momentum_step(z, xc, _rows(x_prev, rows), o.momentum), xa)
            loss_a, grad_a, emb_a = attack.loss_and_gradient(z, xa, ctx, idx)
            raised = (loss_a > _rows(loss_cur, rows)).float()
            if rows is None:  # the whole batch moves: take the new tensors instead of copying into the old
                x_prev, x_cur, grad = x_cur, z, grad_a
                successes.add_(raised)
                loss_cur.copy_(loss_a)
            else:
                for dst, src in ((x_prev, xc), (x_cur, z), (grad, grad_a), (loss_cur, loss_a)):
                    dst.index_copy_(0, rows, src)
                successes.index_add_(0, rows, raised)
            _take_where(loss_a > _rows(loss_best, rows), rows,
                        ((x_best, z), (loss_best, loss_a), (grad_best, grad_a)))
            ap_a = _scores(attack, ctx, emb_a, idx).to(ap_sel.dtype)
            _take_where(ap_a < _rows(ap_sel, rows), rows, ((x_sel, z), (ap_sel, ap_a)))
        if k + 1 in marks:
            height = k + 1 - last_mark
            reduce = (successes < o.rho * height) | (~reduced_at_mark & (loss_at_mark >= loss_best))
            reduce &= active
            reduced_at_mark = reduce.clone()
            loss_at_mark = loss_best.clone()
            successes.zero_()
            last_mark = k + 1
            back = reduce.nonzero().flatten()
            if len(back):
                step[back] /= 2
                best_rows = x_best.index_select(0, back)
                x_cur.index_copy_(0, back, best_rows)
                x_prev.index_copy_(0, back, best_rows)
                grad.index_copy_(0, back, grad_best.index_select(0, back))
        active &= (ap_sel > floor).to(dev)
    # queries that could not be scored (no valid positive, or no gallery in the context) keep the best loss
    unscored = torch.isinf(ap_sel).to(dev)
    x_sel[unscored] = x_best[unscored]
    return x_sel, ap_sel


def momentum_step(z: torch.Tensor, x_cur: torch.Tensor, x_prev: torch.Tensor, momentum: float) -> torch.Tensor:
    """x_cur + α (z - x_cur) + (1 - α)(x_cur - x_prev), written into `z` (a fresh buffer the caller gives up).

    In place with the formula's operation order, so the bits are those of the plain expression (a test holds
    this): published results stay reproducible while the loop allocates two batch-sized tensors fewer.
    """
    return z.sub_(x_cur).mul_(momentum).add_(x_cur).add_(x_cur.sub(x_prev).mul_(1 - momentum))


def _rows(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """The given rows of `t` (a copy), or `t` itself when rows is None (the whole batch)."""
    return t if rows is None else t.index_select(0, rows.to(t.device))


def _take_where(take: torch.Tensor, rows: torch.Tensor | None,
                pairs: tuple[tuple[torch.Tensor, torch.Tensor], ...]) -> None:
    """For each (dst, src): dst[rows[take]] = src[take], `src` holding the batch's `rows` (all when None).

    The same values as boolean-mask indexing, by the cheapest exact copy: a plain copy when every row of the
    whole batch is taken (most early iterations), one masked pass (`torch.where`) when most of it is, row
    copies (`index_select` / `index_copy_`) otherwise. Under deterministic kernels, as in every run,
    `index_copy_` costs about twice the masked pass for a whole batch (measured).
    """
    if rows is None and bool(take.all()):
        for dst, src in pairs:
            dst.copy_(src)
        return
    picked = take.nonzero().flatten()
    if not len(picked):
        return
    if rows is None and 2 * len(picked) > len(take):
        for dst, src in pairs:
            mask = take.to(dst.device).view(-1, *([1] * (dst.dim() - 1)))
            torch.where(mask, src.to(dst.device), dst, out=dst)
        return
    target = picked if rows is None else rows[picked.to(rows.device)]
    for dst, src in pairs:
        dst.index_copy_(0, target.to(dst.device), src.index_select(0, picked.to(src.device)).to(dst.device))


def _ascent(attack: Ascender, x_cur: torch.Tensor, grad: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """x_cur + step · direction(grad), a new tensor; direction is sign(grad) (L-inf) or grad / ||grad|| (L2)."""
    if attack.options.norm == Norm.LINF.value:
        return grad.sign().mul_(step).add_(x_cur)
    return attack.ascend(torch.zeros_like(grad), grad, 1.0).mul_(step).add_(x_cur)


def apgd_ascent(attack: Ascender, x: torch.Tensor, ctx: AttackContext, index: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
    """APGD with `restarts` runs; per query, the run with the lowest AP (or, unscored, the last run's)."""
    o = attack.options
    if o.start == "given":
        if ctx.start_images is None:
            raise ValueError("APGD with start='given' needs the context's start_images")
        x0 = attack.project(ctx.start_images[index.cpu()].to(x.device, x.dtype), x)
    else:
        x0 = attack.start(x, generator)
    floor = floors(o, ctx, index)
    best, best_ap = _one_run(attack, x, x0, ctx, index, floor)
    for _ in range(1, o.restarts):
        open_ = (best_ap > floor).nonzero().flatten()
        if not len(open_):
            break
        xo = x[open_.to(x.device)]
        noise = (torch.rand(xo.shape, generator=generator) * 2 - 1).to(x.device) * o.eps
        cand, cand_ap = _one_run(attack, xo, attack.project(xo + noise, xo), ctx, index[open_], floor[open_])
        better = cand_ap < best_ap[open_]
        sel = open_[better]
        best[sel.to(x.device)] = cand[better.to(x.device)]
        best_ap[sel] = cand_ap[better]
    return best
