"""DDID's parts in isolation: balancing rules, FNES, self-meta split and update."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from benchmark.data import SplitTensors
from benchmark.errors import BenchmarkError
from benchmark.models import ModelConfig, ReidModel
from defenses.ddid.balancing import (
    ConditionalEDM,
    DiffusionConfig,
    balance_plan,
    identity_fidelity,
    median_images_per_id,
)
from defenses.ddid.fnes import FNESConfig, extend_and_mix, shift_to_negative, soft_targets
from defenses.ddid.self_meta import identity_split, meta_update


def test_balance_plan_tops_up_and_diversifies():
    pids = torch.tensor([1] * 2 + [2] * 10 + [3] * 5)
    cams = torch.tensor([1, 2] + [1] * 9 + [2] + [1, 2, 3, 1, 2])
    plan = balance_plan(pids, cams, delta1=5, delta2=0.7)
    inter = [(p, c) for p, c, r in plan if r == "inter-id"]
    intra = [(p, c) for p, c, r in plan if r == "intra-id"]
    assert len([p for p, _ in inter if p == 1]) == 3 and not [p for p, _ in inter if p != 1]
    assert sorted(intra) == [(2, 2), (2, 3)]  # pid 2: camera 1 holds 9/10 > 0.7
    assert median_images_per_id(pids) == 5


def test_fnes_mixing_and_soft_labels():
    g = torch.Generator().manual_seed(0)
    x, x_hat = torch.full((4, 3, 2, 2), 0.5), torch.full((4, 3, 2, 2), 0.5 + 4 / 255)
    x_adv, omega = extend_and_mix(x, x_hat, FNESConfig(gamma=2.0), g)
    expected = x + (1 - omega.view(-1, 1, 1, 1)) * 2 * (x_hat - x)
    assert torch.allclose(x_adv, expected) and x_adv.min() >= 0 and x_adv.max() <= 1
    y, far = torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 1, 0])
    t = soft_targets(y, far, omega, 5, FNESConfig())
    assert torch.allclose(t.sum(1), torch.ones(4))
    shifted = shift_to_negative(torch.eye(5)[y] * 0.5 + 0.1, y, far, 0.2)
    assert torch.allclose(shifted[torch.arange(4), y], torch.full((4,), 0.4))
    assert torch.allclose(shifted[torch.arange(4), far], torch.full((4,), 0.3))


def test_identity_split_is_identity_disjoint():
    labels = torch.arange(8).repeat_interleave(4)
    mtr, mte = identity_split(labels, torch.Generator().manual_seed(0))
    assert (mtr ^ mte).all()
    assert not set(labels[mtr].tolist()) & set(labels[mte].tolist())


def test_meta_update_first_order_matches_manual_gradient():
    torch.manual_seed(0)
    model = ReidModel(ModelConfig("reidnet-s", 4, 32, 16)).eval()
    x1, x2 = torch.rand(4, 3, 32, 16), torch.rand(4, 3, 32, 16)
    loss_a = lambda call: call(x1).embedding.pow(2).mean()  # noqa: E731
    loss_b = lambda call: call(x2).embedding.sum().abs() * 1e-2  # noqa: E731
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    meta_update(model, opt, alpha=0.1, second_order=False, meta_train_loss=loss_a, meta_test_loss=loss_b)
    # manual first-order: grad_a(theta) + grad_b(theta - alpha * grad_a(theta))
    ref = ReidModel(ModelConfig("reidnet-s", 4, 32, 16)).eval()
    ref.load_state_dict(start)
    params = [p for p in ref.parameters() if p.requires_grad]
    ga = torch.autograd.grad(loss_a(ref), params, allow_unused=True)
    ga = [torch.zeros_like(p) if g is None else g for p, g in zip(params, ga, strict=True)]
    with torch.no_grad():
        for p, g in zip(params, ga, strict=True):
            p -= 0.1 * g
    gb = torch.autograd.grad(loss_b(ref), params, allow_unused=True)
    with torch.no_grad():
        for p, g1, g2, s in zip(params, ga, gb, [start[n] for n, q in ref.named_parameters() if q.requires_grad],
                                strict=True):
            expected = s - 0.1 * (g1 + (0 if g2 is None else g2))
            p.copy_(expected)
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), n


def test_generator_round_trip_is_deterministic(tmp_path):
    cfg = DiffusionConfig(height=8, width=4, channels=(16, 16), train_steps=2, batch_size=4, sample_steps=2)
    torch.manual_seed(0)
    edm = ConditionalEDM(cfg, id_values=[3, 7], cam_values=[1, 2], device=torch.device("cpu"))
    images = torch.randint(0, 256, (6, 3, 16, 8), dtype=torch.uint8)
    edm.fit(images, torch.tensor([3, 3, 3, 7, 7, 7]), torch.tensor([1, 2, 1, 2, 1, 2]), seed=0)
    edm.save(tmp_path / "gen")
    loaded = ConditionalEDM.load(tmp_path / "gen", torch.device("cpu"))
    a = edm.sample([3, 7], [2, 1], (16, 8), seed=1)
    assert a.shape == (2, 3, 16, 8) and a.dtype == torch.uint8
    assert torch.equal(a, loaded.sample([3, 7], [2, 1], (16, 8), seed=1))
    with pytest.raises(BenchmarkError, match="not a DDID generator folder"):
        ConditionalEDM.load(tmp_path, torch.device("cpu"))


class _PixelClassifier(torch.nn.Module):
    """Predicts class = round(mean pixel * 10): lets the test set what is 'recognisable'."""

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.nn.functional.one_hot((x.mean((1, 2, 3)) * 10).round().long(), 11).float())


def test_identity_fidelity_counts_generated_images_recognised_as_their_identity():
    pids = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10] * 2)
    real = SplitTensors((pids * 25.5).round().to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 4, 2).contiguous(),
                        pids, torch.zeros_like(pids))
    wrong = SplitTensors(real.images[:4].clone(), torch.tensor([0, 1, 2, 4]), torch.zeros(4, dtype=torch.long))
    out = identity_fidelity(_PixelClassifier(), real, wrong, torch.device("cpu"))
    assert out == {"generated_id_top1": 75.0, "real_id_top1": 100.0}
