"""DDID's parts in isolation: balancing rules, FNES, self-meta split and update."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmark.core.errors import BenchmarkError
from benchmark.data import SplitTensors
from benchmark.models import ModelConfig, ReidModel
from defenses.ddid.balancing import (
    ConditionalEDM,
    DiffusionConfig,
    at_generator_resolution,
    balance_plan,
    median_images_per_id,
    sdedit_ramp,
    source_images,
)
from defenses.ddid.fnes import FNESConfig, extend_and_mix, shift_to_negative, soft_targets
from defenses.ddid.quality import assigned_to_identity, phase1_quality
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


def test_identity_filter_keeps_generated_images_recognised_as_their_identity():
    pids = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10] * 2)
    real = SplitTensors((pids * 25.5).round().to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 4, 2).contiguous(),
                        pids, torch.zeros_like(pids))
    keep = assigned_to_identity(_PixelClassifier(), real, real.images[:4].clone(), torch.tensor([0, 1, 2, 4]),
                                torch.device("cpu"))
    assert keep.tolist() == [True, True, True, False]


def test_sdedit_enters_the_generators_schedule_at_sigma_start():
    from defenses.ddid.balancing import make_scheduler

    scheduler = make_scheduler(DiffusionConfig())
    scheduler.set_timesteps(8, sigmas=sdedit_ramp(1.5, 8))
    sigmas = scheduler.sigmas.tolist()
    assert sigmas[0] == pytest.approx(1.5, rel=1e-5) and sigmas[-2] == pytest.approx(0.002, rel=1e-4)
    assert sigmas[-1] == 0 and all(a > b for a, b in zip(sigmas, sigmas[1:], strict=False))


def test_resampling_at_a_tiny_noise_level_returns_the_source_image():
    """SDEdit's direction: at sigma_start near zero EDM's denoiser passes its input through (c_skip = 1)."""
    cfg = DiffusionConfig(height=16, width=8, channels=(16, 16), mode="resample", sigma_start=0.01, sample_steps=3)
    edm = ConditionalEDM(cfg, [5, 6], [0, 1], torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    sources = torch.randint(0, 256, (4, 3, 32, 16), dtype=torch.uint8, generator=g)
    out = edm.resample(sources, [5, 6, 5, 6], [1, 0, 0, 1], (32, 16), seed=0)
    reference = at_generator_resolution(sources, cfg)
    assert out.shape == sources.shape and out.dtype == torch.uint8
    assert (out.float() - reference.float()).abs().mean() < 3.0  # grey levels
    far = ConditionalEDM(dataclasses.replace(cfg, sigma_start=40.0), [5, 6], [0, 1], torch.device("cpu"))
    assert (far.resample(sources, [5, 6, 5, 6], [1, 0, 0, 1], (32, 16), 0).float()
            - reference.float()).abs().mean() > 20.0


def test_sources_are_real_images_of_the_planned_identity(tiny_ws):
    train = tiny_ws.train
    plan = [(int(p), 0, "inter-id") for p in torch.unique(train.pids)[:5]] * 2
    sources = source_images(train, plan, seed=3)
    for img, (pid, _, _) in zip(sources, plan, strict=True):
        matches = (train.images == img).flatten(1).all(1)
        assert set(train.pids[matches].tolist()) == {pid}
    assert torch.equal(sources, source_images(train, plan, seed=3))


def test_phase1_quality_reports_identity_and_camera_fidelity(tiny_ws):
    train = tiny_ws.train
    copies = SplitTensors(train.images[:30].clone(), train.pids[:30].clone(), train.camids[:30].clone())
    q = phase1_quality(_PixelClassifier(), train, copies, DiffusionConfig(), torch.device("cpu"), seed=0)
    assert q["generated"] == 30 and q["kept_by_id_filter"] == int(q["_keep"].sum())
    assert q["id_fidelity"] == pytest.approx(100.0 * q["_keep"].float().mean().item())
    ncams = len(torch.unique(train.camids))
    assert q["cam_chance"] == pytest.approx(100.0 / ncams)
    for key in ("id_fidelity", "id_top1_real", "id_top1_real_at_generator_res", "cam_fidelity",
                "cam_top1_real_held_out"):
        assert 0.0 <= q[key] <= 100.0


def test_phase1_quality_reports_camera_fidelity_after_the_identity_filter(tiny_ws):
    train = tiny_ws.train
    copies = SplitTensors(train.images[:30].clone(), train.pids[:30].clone(), train.camids[:30].clone())
    q = phase1_quality(_PixelClassifier(), train, copies, DiffusionConfig(), torch.device("cpu"), seed=0)
    keep = q["_keep"]
    assert 0 < int(keep.sum()) < 30, "the check needs images both kept and dropped"
    # the camera fidelity of the kept subset, recomputed from the unfiltered figure on a relabelled copy:
    # give the dropped images a camera they are never predicted as, so they count as misses
    wrong = copies.camids.clone()
    wrong[~keep] = -1
    q_wrong = phase1_quality(_PixelClassifier(), train, SplitTensors(copies.images, copies.pids, wrong),
                             DiffusionConfig(), torch.device("cpu"), seed=0)
    hits_kept = q["cam_fidelity_kept"] * int(keep.sum()) / 100.0
    assert q_wrong["cam_fidelity"] * 30 / 100.0 == pytest.approx(hits_kept)
    nothing = SplitTensors(copies.images[:0], copies.pids[:0], copies.camids[:0])
    assert "cam_fidelity_kept" not in phase1_quality(_PixelClassifier(), train, nothing, DiffusionConfig(),
                                                     torch.device("cpu"), seed=0)


def test_ddid_resample_mode_records_phase1_quality_filters_and_reports_it(tiny_ws, tmp_path):
    import pandas as pd

    from benchmark.report.runs import write_run
    from benchmark.run.execute import execute
    from tests.conftest import cpu_runtime, tiny_config

    spec = tiny_config(defense="ddid", epochs=1, attacks="fgsm", defense_options={
        "train_steps": "2", "sample_steps": "2", "mode": "resample", "sigma_start": "0.01", "id_filter": "true"})
    outcome = execute(spec, cpu_runtime(), workspace=tiny_ws)
    history = outcome.train_info.history
    phase1, quality = history["phase1"], history["quality"]
    assert phase1["used"] == phase1["kept_by_id_filter"] <= phase1["generated"]
    assert quality["used"] == phase1["used"] and 0 <= quality["id_fidelity"] <= 100
    # near sigma 0 resampling passes its real source (an image of the planned identity) through at the
    # generator's resolution: the warm-start model knows them about as well as such real images
    assert abs(quality["id_fidelity"] - quality["id_top1_real_at_generator_res"]) < 35.0
    paths = write_run(outcome, tmp_path / "results", tmp_path / "boards", allow_dirty=True)
    assert (paths["run folder"] / "phase1-samples.png").is_file()
    board = pd.read_csv(next((tmp_path / "boards").rglob("synthped.csv")))
    assert board["training_quality"].str.contains("id_fidelity=").all()
    assert board["training_quality"].str.contains("mode=resample;resolution=64x32;").all()
    assert board["training_quality"].str.contains("sigma_start=0.01").all()
    with pytest.raises(BenchmarkError, match="mode="):
        tiny_config(defense="ddid", defense_options={"mode": "sdedit"})


def test_a_cached_generator_depends_on_its_key_not_on_what_the_process_drew_before(tiny_ws, tmp_path, monkeypatch):
    from benchmark.core.hashing import module_state_digest
    from defenses.ddid.balancing import trained_generator

    cfg = DiffusionConfig(height=16, width=8, channels=(16, 16), train_steps=2)
    ids = sorted(set(tiny_ws.train.pids.tolist()))
    cams = sorted(set(tiny_ws.train.camids.tolist()))
    digests = []
    for i, history in enumerate((0, 12345)):
        monkeypatch.setenv("RRB_CACHE_DIR", str(tmp_path / f"cache{i}"))
        torch.manual_seed(history)
        torch.rand(100)
        edm, losses, folder = trained_generator(tiny_ws.train, cfg, 7, torch.device("cpu"), ids, cams)
        digests.append((module_state_digest(edm.unet), losses))
        assert (folder / "manifest.json").is_file()
        again, _, _ = trained_generator(tiny_ws.train, cfg, 7, torch.device("cpu"), ids, cams)  # from the cache
        assert module_state_digest(again.unet) == digests[-1][0]
    assert digests[0] == digests[1]


def test_phase1_caches_are_keyed_by_thread_count(tiny_ws, tmp_path, monkeypatch):
    """A generator trained at one thread count sums floats differently from one trained at another: a run at
    2 threads must not reuse 1-thread images, or its result would depend on what ran before it."""
    from defenses.ddid.balancing import balance

    monkeypatch.setenv("RRB_CACHE_DIR", str(tmp_path))
    cfg = DiffusionConfig(height=16, width=8, channels=(16, 16), train_steps=2, sample_steps=2)
    threads = torch.get_num_threads()
    folders = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            folders.append(balance(tiny_ws.train, cfg, 7, torch.device("cpu")))
    finally:
        torch.set_num_threads(threads)
    one, two, one_again = folders
    assert one.folder != two.folder
    assert not one.info["cached"] and not two.info["cached"] and one_again.info["cached"]
    assert one_again.folder == one.folder
    generators = sorted(p.name for p in (tmp_path / "ddid-generators").iterdir() if p.is_dir())
    assert len(generators) == 2


def test_balanced_data_train_no_generator(tmp_path, monkeypatch):
    """Every identity at the median count and no camera above the delta2 share (PKU-Reid's layout): the plan
    is empty, so phase 1 adds nothing and trains no generator."""
    from defenses.ddid.balancing import balance

    monkeypatch.setenv("RRB_CACHE_DIR", str(tmp_path))
    pids = torch.arange(4).repeat_interleave(4)
    train = SplitTensors(torch.zeros((16, 3, 16, 8), dtype=torch.uint8), pids, torch.tensor([0, 1] * 8))
    out = balance(train, DiffusionConfig(height=16, width=8, channels=(16, 16), train_steps=2), 0,
                  torch.device("cpu"))
    assert len(out.generated) == 0 and len(out.train) == 16 and out.info["generated"] == 0
    assert not (tmp_path / "ddid-generators").exists() or not any((tmp_path / "ddid-generators").iterdir())
    again = balance(train, DiffusionConfig(height=16, width=8, channels=(16, 16), train_steps=2), 0,
                    torch.device("cpu"))
    assert again.info["cached"] and len(again.generated) == 0


def test_training_drops_each_condition_to_its_null_row_independently():
    from defenses.ddid.balancing import Conditioner

    cond = Conditioner(num_ids=4, num_cams=3, dim=8)
    ids, cams = torch.arange(4).repeat(500), torch.arange(3).repeat(667)[:2000]
    g = torch.Generator().manual_seed(0)
    kept = cond.dropped(ids, cams, 0.0, g)
    assert torch.equal(kept[0], ids) and torch.equal(kept[1], cams)
    gone = cond.dropped(ids, cams, 1.0, g)
    assert (gone[0] == cond.null_id).all() and (gone[1] == cond.null_cam).all() and cond.null_id == 4
    d_ids, d_cams = cond.dropped(ids, cams, 0.3, g)
    id_off, cam_off = d_ids == cond.null_id, d_cams == cond.null_cam
    assert 0.25 < id_off.float().mean() < 0.35 and 0.25 < cam_off.float().mean() < 0.35
    assert 0.06 < (id_off & cam_off).float().mean() < 0.12  # independent: about 0.3 * 0.3


def test_guided_sampler_combines_the_conditional_and_dropped_predictions():
    """eps = eps(id, cam) + w_id (eps(id, cam) - eps(-, cam)) + w_cam (eps(id, cam) - eps(id, -)), in one call."""
    from defenses.ddid.balancing import noise_timestep

    cfg = DiffusionConfig(height=8, width=4, channels=(16, 16), sample_steps=3, id_guidance=2.0, cam_guidance=3.0)
    torch.manual_seed(0)
    edm = ConditionalEDM(cfg, [3, 7], [1, 2], torch.device("cpu"))
    torch.nn.init.normal_(edm.conditioner.ids.weight)
    torch.nn.init.normal_(edm.conditioner.cams.weight)
    conds = edm._condition([3, 7], [2, 1])
    assert conds.shape[0] == 3
    x0 = torch.randn(2, 3, 8, 4)
    edm.scheduler.set_timesteps(3)
    with torch.no_grad():
        out = edm._walk(x0 * edm.scheduler.init_noise_sigma, conds)
        edm.scheduler.set_timesteps(3)
        x = x0 * edm.scheduler.init_noise_sigma
        ids, cams = torch.tensor([0, 1]), torch.tensor([1, 0])
        rows = [edm.conditioner(ids, cams), edm.conditioner(torch.full_like(ids, 2), cams),
                edm.conditioner(ids, torch.full_like(cams, 2))]
        for i, t in enumerate(edm.scheduler.timesteps):
            sigma = edm.scheduler.sigmas[i].float().expand(2)
            model_in = edm.scheduler.scale_model_input(x, t)
            e = [edm.unet(model_in, noise_timestep(sigma), class_labels=r).sample for r in rows]
            x = edm.scheduler.step(e[0] + 2.0 * (e[0] - e[1]) + 3.0 * (e[0] - e[2]), t, x).prev_sample
    assert torch.allclose(out, x, atol=1e-4)
    unguided = ConditionalEDM(dataclasses.replace(cfg, id_guidance=0.0, cam_guidance=0.0), [3, 7], [1, 2],
                              torch.device("cpu"))
    assert unguided._condition([3, 7], [2, 1]).shape[0] == 1


def test_a_generator_folder_without_unconditional_rows_is_refused_in_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = DiffusionConfig(height=8, width=4, channels=(16, 16), train_steps=1, batch_size=2, sample_steps=2)
    edm = ConditionalEDM(cfg, [3, 7], [1, 2], torch.device("cpu"))
    edm.save(tmp_path / "gen")
    path = tmp_path / "gen" / "conditioning.safetensors"
    old = {k: v[:-1].contiguous() for k, v in load_file(str(path)).items()}  # phase-1 version 3: no null rows
    save_file(old, str(path))
    with pytest.raises(BenchmarkError, match="older DDID phase 1"):
        ConditionalEDM.load(tmp_path / "gen", torch.device("cpu"))


def tiny_generator(folder: Path) -> Path:
    """A generator folder as a DDID run writes it (an untrained 8x4 UNet)."""
    cfg = DiffusionConfig(height=8, width=4, channels=(16, 16), train_steps=1, batch_size=2, sample_steps=2)
    ConditionalEDM(cfg, [3, 7], [1, 2], torch.device("cpu")).save(folder)
    return folder


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("damage, message", [
    (lambda g: [p.unlink() for p in g.rglob("*") if p.is_file()], "not a DDID generator folder"),
    (lambda g: (g / "conditioning.json").write_text("{broken"), "damaged generator record"),
    (lambda g: (g / "conditioning.json").write_text("[1, 2]"), "does not hold a DDID generator"),
    (lambda g: (g / "unet" / "config.json").write_text('{"_class_name": "VQModel"}'), "does not hold a DDID"),
])
def test_a_generator_folder_that_is_not_one_is_refused_before_any_work(tmp_path, damage, message):
    from defenses import build_defense

    gen = tiny_generator(tmp_path / "gen")
    build_defense("ddid", generator=str(gen))  # intact: accepted
    damage(gen)
    with pytest.raises(BenchmarkError, match=message) as exc:
        build_defense("ddid", generator=str(gen))
    assert "\n" not in str(exc.value)
    with pytest.raises(BenchmarkError, match="is not a folder"):
        build_defense("ddid", generator=str(gen / "conditioning.json"))


@pytest.mark.parametrize("part", ["unet/diffusion_pytorch_model.safetensors", "conditioning.safetensors"])
def test_a_generator_with_damaged_weights_is_refused_in_one_line_when_loaded(tmp_path, part):
    gen = tiny_generator(tmp_path / "gen")
    _truncate(gen / part)
    with pytest.raises(BenchmarkError, match="cannot load the DDID generator") as exc:
        ConditionalEDM.load(gen, torch.device("cpu"))
    assert "\n" not in str(exc.value)


def test_resampling_with_a_kept_centre_re_renders_only_the_background():
    from defenses.ddid.balancing import center_mask

    mask = center_mask(16, 8, 0.5)
    assert mask.shape == (1, 1, 16, 8) and mask[0, 0, 8, 3:5].eq(1).all() and mask[0, 0, 8, [0, 7]].eq(0).all()
    assert mask[0, 0, 0].eq(0).all()  # top and bottom margins are background too
    cfg = DiffusionConfig(height=16, width=8, channels=(16, 16), mode="resample", sigma_start=40.0, sample_steps=8,
                          keep_center=0.5)
    torch.manual_seed(0)
    edm = ConditionalEDM(cfg, [5, 6], [0, 1], torch.device("cpu"))
    sources = torch.randint(0, 256, (4, 3, 32, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = edm.resample(sources, [5, 6, 5, 6], [1, 0, 0, 1], (32, 16), seed=0).float()
    diff = (out - at_generator_resolution(sources, cfg).float()).abs().mean((0, 1))
    big = torch.nn.functional.interpolate(mask, size=(32, 16))[0, 0].bool()
    assert diff[big].mean() < 0.5 * diff[~big].mean()  # the person region stays closer to its source
