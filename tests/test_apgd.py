"""APGD (attacks.apgd) on toy problems whose optimum is known."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from attacks import Attack, AttackContext
from attacks.apgd import APGDOptions, checkpoints, momentum_step
from attacks.base import sq_dist

EPS = 8 / 255


class Flatten(nn.Module):
    """A 'model' whose embedding is its (flattened) input, optionally through a fixed linear map."""

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight if weight is not None else torch.zeros(1), requires_grad=False)
        self.linear = weight is not None

    eot_samples = 1

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return flat @ self.weight.T if self.linear else flat

    def attack_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


class ToTarget(Attack):
    """Concave objective: minus the squared distance to a target image inside the ε-ball."""
    Options = APGDOptions

    def loss(self, emb, x, ctx, index):
        return -sq_dist(emb, ctx.cache["target"][index].flatten(1))


class AwayFromClean(Attack):
    """Convex objective on a linear embedding: maximised at a vertex of the ε-ball."""
    Options = APGDOptions

    def loss(self, emb, x, ctx, index):
        return sq_dist(emb, ctx.query_feats[index])


def _context(n: int) -> AttackContext:
    return AttackContext(query_pids=torch.arange(n), query_feats=torch.zeros(n, 1))


def test_checkpoints_follow_croce_hein():
    assert checkpoints(100)[:4] == [22, 41, 57, 70] and checkpoints(100)[-1] == 100
    assert checkpoints(10)[-1] == 10 and checkpoints(10) == sorted(set(checkpoints(10)))


def test_apgd_reaches_an_interior_optimum():
    """Step halving must let APGD settle on an optimum inside the ball (a fixed signed step cannot)."""
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 4) * 0.5 + 0.25
    target = x + (torch.rand_like(x) * 2 - 1) * EPS * 0.6
    ctx = _context(4)
    ctx.cache["target"] = target
    adv = ToTarget(Flatten(), eps=EPS)(x, ctx)
    assert (adv - x).abs().max() <= EPS + 1e-7
    assert (adv - target).abs().max() < EPS / 20, "APGD did not converge to the interior optimum"


def test_apgd_reaches_the_vertex_optimum_of_a_linear_model():
    torch.manual_seed(1)
    x = torch.rand(3, 3, 8, 4) * 0.5 + 0.25
    w = torch.randn(1, x[0].numel())
    model = Flatten(w)
    ctx = _context(3)
    ctx.query_feats = model.embed(x).detach()
    adv = AwayFromClean(model, eps=EPS, steps=50)(x, ctx)
    best = (EPS * w.abs().sum()) ** 2  # |w . delta| is largest at delta = ±eps sign(w)
    reached = sq_dist(model.embed(adv), ctx.query_feats)
    assert torch.allclose(reached, best.expand(3), rtol=1e-4), (reached, best)


def test_floor_stops_queries_already_broken():
    """A query whose AP is at or below the floor is not iterated further (its first iterate is kept)."""

    @dataclass
    class Scored(AttackContext):
        calls: int = 0

        def can_score(self) -> bool:
            return True

        def query_ap(self, emb, index):
            self.calls += 1
            return torch.zeros(len(index), dtype=torch.float64)  # every query broken from the start

    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 4)
    ctx = Scored(query_pids=torch.arange(2), query_feats=torch.zeros(2, 1))
    ctx.cache["target"] = x
    attack = ToTarget(Flatten(), eps=EPS, floor=0.01, steps=30)
    calls = []
    original = attack.loss_and_gradient
    attack.loss_and_gradient = lambda *a: calls.append(1) or original(*a)
    attack(x, ctx)
    assert len(calls) == 1, "APGD kept iterating queries already at the floor"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_restarts_stay_in_the_ball(norm):
    torch.manual_seed(2)
    x = torch.rand(2, 3, 8, 4)
    ctx = _context(2)
    ctx.cache["target"] = (x + 0.5).clamp(0, 1)
    eps = EPS if norm == "linf" else 0.5
    adv = ToTarget(Flatten(), eps=eps, step=2 * eps, norm=norm, restarts=3, steps=10)(x, ctx)
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all() and adv.min() >= 0 and adv.max() <= 1


def test_smoothed_ap_tends_to_the_evaluators_ap_as_the_temperature_falls():
    from attacks.objectives import smoothed_ap
    from benchmark.core.metrics import QueryScorer

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 8, generator=g)
    q_pids, g_pids = torch.arange(12) % 6, torch.arange(60) % 6
    g_pids[:5] = -1  # junk is ignored by both
    qf = centres[q_pids] + 0.8 * torch.randn(12, 8, generator=g)
    gf = centres[g_pids.clamp(min=0)] + 0.8 * torch.randn(60, 8, generator=g)
    q_cams, g_cams = torch.zeros(12, dtype=torch.long), torch.arange(60) % 3
    ctx = AttackContext(query_pids=q_pids, query_feats=qf, gallery_feats=gf, gallery_pids=g_pids,
                        query_camids=q_cams, gallery_camids=g_cams)
    exact, _ = QueryScorer(gf, g_pids, g_cams)(qf, q_pids, q_cams)
    index = torch.arange(12)
    sharp = smoothed_ap(qf, ctx, index, temperature=1e-5).double()
    soft = smoothed_ap(qf, ctx, index, temperature=0.5).double()
    scored = ~torch.isnan(exact)
    assert 0 < int(scored.sum()) < 12 and (sharp[~scored] == 0).all()
    assert torch.allclose(sharp[scored], exact[scored], atol=1e-4)
    assert not torch.allclose(soft[scored], exact[scored], atol=1e-3)
    emb = qf.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(smoothed_ap(emb, ctx, index, temperature=0.05).sum(), emb)
    assert grad.abs().sum() > 0


def test_a_given_start_is_where_the_first_run_begins():
    """start='given' (the suite's restart from its worst images): with the target as the start, APGD starts at the
    optimum, and the start is projected into the ball; without start images it refuses."""
    torch.manual_seed(0)
    x = torch.rand(3, 3, 8, 4) * 0.5 + 0.25
    target = x + (torch.rand_like(x) * 2 - 1) * EPS * 0.6
    ctx = _context(3)
    ctx.cache["target"] = target
    calls = []
    attack = ToTarget(Flatten(), eps=EPS, steps=1, start="given")
    original = attack.loss_and_gradient
    attack.loss_and_gradient = lambda x_adv, *a: calls.append(x_adv.clone()) or original(x_adv, *a)
    with pytest.raises(ValueError, match="start_images"):
        attack(x, ctx)
    ctx.start_images = target + 3 * EPS * (torch.arange(3) == 2).float()[:, None, None, None]  # the last: outside
    calls.clear()
    attack(x, ctx)
    assert torch.equal(calls[0][:2], target[:2])
    assert (calls[0][2] - x[2]).abs().max() <= EPS + 1e-7


def test_in_place_steps_keep_the_bits_of_the_plain_formulas():
    """The loop's in-place momentum step and L-inf projection give the exact bits of the textbook expressions,
    so published results reproduce after the speed-up (operation order matters in floating point)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 8, generator=g)
    x_cur = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * EPS).clamp(0, 1)
    x_prev = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * EPS).clamp(0, 1)
    z = x_cur + 0.37 * torch.randn(x.shape, generator=g) * EPS
    expected = x_cur + 0.75 * (z - x_cur) + (1 - 0.75) * (x_cur - x_prev)
    assert torch.equal(momentum_step(z.clone(), x_cur, x_prev, 0.75), expected)
    attack = AwayFromClean(Flatten(), eps=EPS)
    far = x + 3 * EPS * torch.randn(x.shape, generator=g)
    assert torch.equal(attack.project(far, x), (x + (far - x).clamp(-EPS, EPS)).clamp(0.0, 1.0))


def _plain_run(attack, x, x0, ctx, index, floor):
    """One APGD run written the plain way: boolean masks and `torch.where`, nothing in place. The loop in
    `attacks.apgd` copies rows instead of masking and reuses buffers; it must give these bits exactly."""
    o = attack.options
    n = len(x)
    rows4 = (n, 1, 1, 1)

    def scores(emb, idx):
        if not ctx.can_score():
            return torch.full((len(emb),), float("inf"), dtype=torch.float64)
        ap = ctx.query_ap(emb, idx)
        return torch.where(torch.isnan(ap), float("inf"), ap)

    step = torch.full(rows4, float(o.step))
    marks = set(checkpoints(o.steps))
    loss, grad, emb = attack.loss_and_gradient(x0, x, ctx, index)
    x_cur = x_prev = x_best = x_sel = x0
    loss_cur = loss_best = loss_at_mark = loss
    grad_best, ap_sel = grad, scores(emb, index)
    successes, reduced_at_mark, last_mark = torch.zeros(n), torch.ones(n, dtype=torch.bool), 0
    active = ap_sel > floor
    for k in range(o.steps):
        a = active.clone()
        if a.any():
            g = grad[a]
            direction = g.sign() if o.norm == "linf" else attack.ascend(torch.zeros_like(g), g, 1.0)
            z = attack.project(x_cur[a] + step[a] * direction, x[a])
            if k > 0:
                z = attack.project(x_cur[a] + o.momentum * (z - x_cur[a]) + (1 - o.momentum) * (x_cur[a] - x_prev[a]),
                                   x[a])
            loss_a, grad_a, emb_a = attack.loss_and_gradient(z, x[a], ctx, index[a])
            x_prev, x_cur, grad = x_prev.clone(), x_cur.clone(), grad.clone()
            x_prev[a], x_cur[a], grad[a] = x_cur[a], z, grad_a
            successes[a] += (loss_a > loss_cur[a]).float()
            loss_cur = loss_cur.clone()
            loss_cur[a] = loss_a
            better = torch.zeros(n, dtype=torch.bool)
            better[a] = loss_a > loss_best[a]
            x_best = torch.where(better.view(rows4), x_cur, x_best)
            grad_best = torch.where(better.view(rows4), grad, grad_best)
            loss_best = torch.where(better, loss_cur, loss_best)
            ap_now = ap_sel.clone()
            ap_now[a] = scores(emb_a, index[a])
            lower = ap_now < ap_sel
            x_sel, ap_sel = torch.where(lower.view(rows4), x_cur, x_sel), torch.where(lower, ap_now, ap_sel)
        if k + 1 in marks:
            stalled = (successes < o.rho * (k + 1 - last_mark)) | (~reduced_at_mark & (loss_at_mark >= loss_best))
            reduce = stalled & active
            reduced_at_mark, loss_at_mark, last_mark, successes = reduce, loss_best, k + 1, torch.zeros(n)
            step = torch.where(reduce.view(rows4), step / 2, step)
            x_cur = torch.where(reduce.view(rows4), x_best, x_cur)
            x_prev = torch.where(reduce.view(rows4), x_best, x_prev)
            grad = torch.where(reduce.view(rows4), grad_best, grad)
        active = active & (ap_sel > floor)
    return torch.where(torch.isinf(ap_sel).view(rows4), x_best, x_sel), ap_sel


@pytest.mark.parametrize("name, options", [
    ("apgd-sap", {"steps": 12}),
    ("apgd-ce", {"steps": 10, "restarts": 2}),
    ("apgd-sap", {"steps": 12, "floor": "median"}),
    ("apgd-margin", {"steps": 9, "floor": "median", "restarts": 3}),
    ("apgd-ce", {"steps": 10, "norm": "l2", "eps": 0.5, "step": 1.0, "floor": "median"}),
    ("apgd-sma", {"steps": 8}),  # no gallery: the best-loss iterate is kept
])
def test_the_loop_gives_the_bits_of_plain_apgd(monkeypatch, name, options):
    """The loop's row copies, whole-batch fast paths and reused buffers change no bit of any iterate: the attack
    equals `_plain_run` exactly, with queries dropping out at the floor, step halvings, restarts and L2."""
    import attacks.apgd
    from attacks import build_attack
    from benchmark.core.metrics import QueryScorer

    g = torch.Generator().manual_seed(3)
    x, gallery = torch.rand(24, 3, 8, 4, generator=g), torch.rand(60, 3, 8, 4, generator=g)
    model = Flatten(torch.randn(16, x[0].numel(), generator=g))
    q_pids, g_pids = torch.arange(24) % 6, torch.arange(60) % 6
    q_cams, g_cams = torch.zeros(24, dtype=torch.long), torch.arange(60) % 3
    qf, gf = model.embed(x).detach(), model.embed(gallery).detach()
    scored = name != "apgd-sma"
    ctx = AttackContext(query_pids=q_pids, query_feats=qf, gallery_feats=gf if scored else None,
                        gallery_pids=g_pids if scored else None, query_camids=q_cams if scored else None,
                        gallery_camids=g_cams if scored else None)
    if options.get("floor") == "median":
        options = {**options, "floor": float(QueryScorer(gf, g_pids, g_cams)(qf, q_pids, q_cams)[0].nanmedian())}
    attack = build_attack(name, model, **options)
    attack.batch_size = 12  # two batches: a run's whole-batch and subset paths differ
    fast = attack.run(x, ctx)
    steps_taken = []
    loss_and_gradient = attack.loss_and_gradient
    attack.loss_and_gradient = lambda x_adv, *a: steps_taken.append(len(x_adv)) or loss_and_gradient(x_adv, *a)
    monkeypatch.setattr(attacks.apgd, "_one_run", _plain_run)
    assert torch.equal(attack.run(x, ctx), fast)
    if "floor" in options and "restarts" not in options:
        assert any(s < 12 for s in steps_taken), "no iteration ran with only some of its batch still active"
