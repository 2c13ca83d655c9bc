"""DDID phase 1: balance the training data with an identity- and camera-conditioned diffusion model.

- Inter-ID imbalance: an identity with n_i < delta1 images gets delta1 - n_i generated images.
- Intra-ID diversity: when one camera holds more than a delta2 fraction of an identity's images,
  one image of that identity is generated for every other camera.

The generator is a diffusers `UNet2DModel` trained with EDM preconditioning (Karras et al. 2022,
`EDMEulerScheduler`, Karras sigmas). Conditioning is the sum of a learned identity embedding and a
learned camera embedding fed through `class_embed_type="identity"`, so (identity, camera) pairs
never seen together can still be generated. The model runs at a reduced resolution (CPU budget)
and samples are upsampled to the ReID input size. Generated images are cached on disk with a
manifest keyed by a hash of the data and the configuration.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from benchmark.core.atomic import atomic_folder, atomic_write_text, remove_folder, save_tensors, share_tree
from benchmark.core.device import numerics
from benchmark.core.errors import BenchmarkError
from benchmark.core.hashing import file_digests, fingerprint, manifest_intact, sha256_tree
from benchmark.core.options import option
from benchmark.core.paths import cache_dir
from benchmark.core.training import split_fingerprint
from benchmark.data import SplitTensors

log = logging.getLogger("benchmark")


#: generate: sample from noise; resample: SDEdit from a real image of the same identity
MODES = ("generate", "resample")


@dataclass(frozen=True)
class DiffusionConfig:
    """The phase-1 generator and the balancing thresholds."""
    height: int = option(64, low=8, high=512)
    width: int = option(32, low=4, high=512)
    #: four levels down to 8x4; 16 channels at full resolution keep a training step at ~0.37 s on 2 CPU threads
    channels: tuple[int, ...] = option((16, 32, 64, 64), low=1, high=1024)
    train_steps: int = option(600, low=1, high=1_000_000)
    batch_size: int = option(32, low=1, high=4096)
    lr: float = option(1e-3, above=0, high=1)
    sample_steps: int = option(24, low=1, high=1000)
    p_mean: float = option(-1.2, low=-10, high=10)
    p_std: float = option(1.2, above=0, high=10)
    sigma_data: float = option(0.5, above=0, high=10)
    #: 0 = median images per identity (our default; the paper leaves it open)
    delta1: int = option(0, low=0, high=100_000)
    #: chosen by `sweep --tune ddid`
    delta2: float = option(0.6, low=0, high=1)
    #: generate: pure conditional sampling from noise; resample: SDEdit (Meng et al., ICLR 2022) from a real
    #: image of the same identity, noised to sigma_start and denoised towards the target camera
    mode: str = option("resample", choices=MODES)
    sigma_start: float = option(5.0, above=0, high=80)
    #: classifier-free guidance (Ho & Salimans 2022), one scale per condition (InstructPix2Pix-style):
    #: eps = eps(id, cam) + id_guidance * (eps(id, cam) - eps(-, cam)) + cam_guidance * (eps(id, cam) - eps(id, -));
    #: 0 = the conditional model alone
    id_guidance: float = option(0.0, low=0, high=50)
    cam_guidance: float = option(4.0, low=0, high=50)
    #: training drops each condition (identity, camera) independently with this probability, so the model
    #: also learns eps(-, cam) and eps(id, -) for guidance
    cond_drop: float = option(0.1, low=0, below=1)
    #: resample only: width share of a centred box (0.9 of the height) where the person stands, re-imposed
    #: from the noised source at every step but the last quarter (RePaint, Lugmayr et al. CVPR 2022), so the
    #: background is re-rendered for the target camera from sigma_start while the person is kept; 0 = plain SDEdit
    keep_center: float = option(0.4, low=0, below=1)
    id_filter: bool = False  # drop samples the warm-start model does not assign to their identity
    version: ClassVar[int] = 4  # bump when phase 1 changes so cached generators and images are rebuilt


def balance_plan(pids: torch.Tensor, camids: torch.Tensor, delta1: int, delta2: float
                 ) -> list[tuple[int, int, str]]:
    """(pid, camid, reason) for every image to generate, by the delta1 / delta2 rules."""
    cams = sorted(set(camids.tolist()))
    plan: list[tuple[int, int, str]] = []
    for pid in sorted(set(pids.tolist())):
        own = camids[pids == pid].tolist()
        counts = {c: own.count(c) for c in cams}
        n = len(own)
        # inter-ID: top up to delta1, each new image in the camera this ID has least of
        for _ in range(max(0, delta1 - n)):
            cam = min(cams, key=lambda c: (counts[c], c))
            counts[cam] += 1
            plan.append((pid, cam, "inter-id"))
        dominant = max(cams, key=lambda c: own.count(c))
        if own.count(dominant) > delta2 * n:
            plan.extend((pid, c, "intra-id") for c in cams if c != dominant)
    return plan


def median_images_per_id(pids: torch.Tensor) -> int:
    """Median number of images per identity (rounded up): the default delta1."""
    _, counts = torch.unique(pids, return_counts=True)
    return int(counts.float().median().ceil())


class Conditioner(nn.Module):
    """Identity embedding + camera embedding, in the UNet's time-embedding space.

    Each table has one extra row, the last: the "no condition" of classifier-free guidance.
    """

    def __init__(self, num_ids: int, num_cams: int, dim: int) -> None:
        super().__init__()
        self.ids = nn.Embedding(num_ids + 1, dim)
        self.cams = nn.Embedding(num_cams + 1, dim)

    @property
    def null_id(self) -> int:
        """Index of the unconditional identity."""
        return self.ids.num_embeddings - 1

    @property
    def null_cam(self) -> int:
        """Index of the unconditional camera."""
        return self.cams.num_embeddings - 1

    def forward(self, id_index: torch.Tensor, cam_index: torch.Tensor) -> torch.Tensor:
        return self.ids(id_index) + self.cams(cam_index)

    def dropped(self, id_index: torch.Tensor, cam_index: torch.Tensor, p: float, g: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each identity and each camera replaced by its null row with probability p (independently)."""
        drop = torch.rand((2, len(id_index)), generator=g).to(id_index.device) < p
        return (torch.where(drop[0], self.null_id, id_index), torch.where(drop[1], self.null_cam, cam_index))


def sdedit_ramp(sigma_start: float, steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                rho: float = 7.0) -> torch.Tensor:
    """The part of the Karras ramp (diffusers' `sigmas` argument, in [0, 1]) whose noise levels run from
    `sigma_start` down to `sigma_min` in `steps` steps: the generator's own schedule, entered midway."""
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    start = (min(sigma_start, sigma_max) ** (1 / rho) - hi) / (lo - hi)
    return torch.linspace(start, 1.0, max(steps, 1), dtype=torch.float64)


def center_mask(height: int, width: int, share: float) -> torch.Tensor:
    """(1, 1, H, W) mask, 1 on a centred box `share` of the width and 0.9 of the height (a pedestrian crop's
    person), 0 elsewhere."""
    mask = torch.zeros(1, 1, height, width)
    half_w = max(1, round(share * width / 2))
    top = round(0.05 * height)
    mask[..., top:height - top, max(0, width // 2 - half_w):width // 2 + half_w] = 1.0
    return mask


def _to_uint8(x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 images at the ReID input size."""
    x = (x.clamp(-1, 1) + 1) / 2
    x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
    return (x * 255).round().clamp(0, 255).to(torch.uint8).cpu()


def at_generator_resolution(images: torch.Tensor, cfg: DiffusionConfig) -> torch.Tensor:
    """uint8 images down to the generator's resolution and back: real images as sharp as generated ones."""
    x = F.interpolate(images.float().div(255.0), size=(cfg.height, cfg.width), mode="area") * 2 - 1
    return _to_uint8(x, tuple(images.shape[2:]))


def source_images(train: SplitTensors, plan: list[tuple[int, int, str]], seed: int) -> torch.Tensor:
    """For each planned (pid, camera), a real training image of that pid, drawn at random (seeded)."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for pid, _, _ in plan:
        own = torch.nonzero(train.pids == pid).flatten()
        picks.append(int(own[torch.randint(len(own), (1,), generator=g)]))
    return train.images[torch.tensor(picks, dtype=torch.long)] if picks else train.images[:0]


def build_unet(cfg: DiffusionConfig) -> nn.Module:
    """The diffusers UNet2DModel of the generator."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=(cfg.height, cfg.width), in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=cfg.channels, down_block_types=("DownBlock2D",) * len(cfg.channels),
        up_block_types=("UpBlock2D",) * len(cfg.channels), time_embedding_type="positional",
        class_embed_type="identity", norm_num_groups=16)


def noise_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """EDM's c_noise = log(sigma) / 4, mapped onto [0, 1000] for the UNet's sinusoidal embedding.

    (diffusers' Fourier embedding multiplies log(sigma) by a fixed scale of 16, which makes nearby
    noise levels look unrelated: samples then never lose their noise.)
    """
    return (0.25 * torch.log(sigma) + 1.56) * (1000.0 / 2.66)


def make_scheduler(cfg: DiffusionConfig):
    """diffusers EDMEulerScheduler with Karras sigmas."""
    from diffusers import EDMEulerScheduler

    return EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=cfg.sigma_data, sigma_schedule="karras",
                             prediction_type="epsilon")


GENERATOR_FILES = ("unet/config.json", "scheduler/scheduler_config.json", "conditioning.json",
                   "conditioning.safetensors")


def check_generator_folder(folder: Path) -> None:
    """Refuse, before any work, a folder that is not a DDID generator as `ConditionalEDM.save` writes it:
    the diffusers UNet and scheduler configs, its weights, and the conditioning record and tensors."""
    folder = Path(folder)
    fix = ("pass a folder written by a DDID run (under the cache's ddid-generators/, named in its phase-1 "
           "manifest) with --defense-opt generator=PATH")
    if not folder.is_dir():
        raise BenchmarkError(f"DDID generator '{folder}' is not a folder; {fix}")
    missing = [f for f in GENERATOR_FILES if not (folder / f).is_file()]
    if not any((folder / "unet").glob("diffusion_pytorch_model*")):
        missing.append("unet/diffusion_pytorch_model.safetensors")
    if missing:
        raise BenchmarkError(f"'{folder}' is not a DDID generator folder (no {', '.join(missing)}); {fix}")
    try:
        meta = json.loads((folder / "conditioning.json").read_text())
        unet = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"'{folder}' holds a damaged generator record ({exc}); {fix}") from None
    if not (isinstance(meta, dict) and {"config", "id_values", "cam_values"} <= set(meta)
            and isinstance(unet, dict) and unet.get("_class_name") == "UNet2DModel"):
        raise BenchmarkError(f"'{folder}' does not hold a DDID generator (a diffusers UNet2DModel with its "
                             f"conditioning record); {fix}")


class ConditionalEDM:
    """UNet + conditioner + EDM scheduler: training, sampling, save/load as a diffusers folder."""

    def __init__(self, cfg: DiffusionConfig, id_values: list[int], cam_values: list[int],
                 device: torch.device) -> None:
        self.cfg = cfg
        self.id_values, self.cam_values = id_values, cam_values
        self.unet = build_unet(cfg).to(device)
        dim = self.unet.config.block_out_channels[0] * 4
        self.conditioner = Conditioner(len(id_values), len(cam_values), dim).to(device)
        self.scheduler = make_scheduler(cfg)
        self.device = device

    def _indices(self, pids: torch.Tensor, cams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor([self.id_values.index(int(p)) for p in pids], device=self.device)
        cs = torch.tensor([self.cam_values.index(int(c)) for c in cams], device=self.device)
        return ids, cs

    def denoise(self, noisy: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """EDM-preconditioned denoiser D(x; sigma, condition)."""
        s = sigma.view(-1, 1, 1, 1)
        model_in = self.scheduler.precondition_inputs(noisy, s)
        out = self.unet(model_in, noise_timestep(sigma.flatten()), class_labels=cond).sample
        return self.scheduler.precondition_outputs(noisy, out, s)

    def fit(self, images: torch.Tensor, pids: torch.Tensor, cams: torch.Tensor, seed: int) -> list[float]:
        """Train the generator on the training split; returns the losses."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(seed)
        x_all = F.interpolate(images.float().div(255.0), size=(cfg.height, cfg.width), mode="area") * 2 - 1
        ids, cs = self._indices(pids, cams)
        params = list(self.unet.parameters()) + list(self.conditioner.parameters())
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        losses = []
        self.unet.train()
        bar = tqdm(range(cfg.train_steps), desc="DDID phase 1: diffusion training", leave=False, disable=None)
        for _ in bar:
            idx = torch.randint(len(x_all), (cfg.batch_size,), generator=g)
            x = x_all[idx].to(self.device)
            sigma = torch.exp(torch.randn(len(idx), generator=g) * cfg.p_std + cfg.p_mean).to(self.device)
            noise = torch.randn(x.shape, generator=g).to(self.device)
            cond = self.conditioner(*self.conditioner.dropped(ids[idx], cs[idx], cfg.cond_drop, g))
            denoised = self.denoise(x + sigma.view(-1, 1, 1, 1) * noise, sigma, cond)
            weight = (sigma ** 2 + cfg.sigma_data ** 2) / (sigma * cfg.sigma_data) ** 2
            loss = (weight.view(-1, 1, 1, 1) * (denoised - x) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", refresh=False)
            if bar.disable and len(losses) % 100 == 0:  # no bar off a terminal: a line every 100 steps instead
                log.info("DDID phase 1: diffusion step %d/%d, loss %.3f", len(losses), cfg.train_steps,
                         np.mean(losses[-50:]))
        self.unet.eval()
        return losses

    def _condition(self, pids: list[int], cams: list[int]) -> torch.Tensor:
        """Conditioning vectors of (pid, camera) pairs, then (if guided) the same with the identity dropped,
        then with the camera dropped: the rows `_walk` combines."""
        ids, cs = self._indices(torch.tensor(pids), torch.tensor(cams))
        conds = [self.conditioner(ids, cs)]
        if self.cfg.id_guidance:
            conds.append(self.conditioner(torch.full_like(ids, self.conditioner.null_id), cs))
        if self.cfg.cam_guidance:
            conds.append(self.conditioner(ids, torch.full_like(cs, self.conditioner.null_cam)))
        return torch.stack(conds)

    def _walk(self, x: torch.Tensor, conds: torch.Tensor, known: tuple[torch.Tensor, torch.Tensor, torch.Generator]
              | None = None) -> torch.Tensor:
        """The EDM Euler sampler over the scheduler's current timesteps, from `x` at the first one, with
        classifier-free guidance over the rows of `conds` (one UNet call per step for all of them).

        `known` = (x0, mask, generator): where mask is 1, x is replaced by x0 noised to the step's level
        before each of the first three quarters of the steps (the last quarter blends the seams)."""
        scales = [s for s in (self.cfg.id_guidance, self.cfg.cam_guidance) if s]
        k = len(conds)
        kept_steps = (3 * len(self.scheduler.timesteps)) // 4
        for i, t in enumerate(self.scheduler.timesteps):
            if known is not None and i < kept_steps:
                x0, mask, g = known
                level = self.scheduler.sigmas[i].to(self.device, torch.float32)
                noised = x0 + level * torch.randn(x0.shape, generator=g).to(self.device)
                x = mask * noised + (1 - mask) * x
            sigma = self.scheduler.sigmas[i].to(self.device, torch.float32).expand(len(x) * k)
            model_in = self.scheduler.scale_model_input(x, t).repeat(k, 1, 1, 1)
            eps = self.unet(model_in, noise_timestep(sigma), class_labels=conds.flatten(0, 1)).sample.unflatten(
                0, (k, len(x)))
            guided = eps[0] + sum(s * (eps[0] - eps[j + 1]) for j, s in enumerate(scales))
            x = self.scheduler.step(guided, t, x).prev_sample
        return x

    @torch.no_grad()
    def sample(self, pids: list[int], cams: list[int], out_size: tuple[int, int], seed: int,
               batch: int = 128) -> torch.Tensor:
        """uint8 images (N, 3, H, W) for the requested (pid, camera) pairs."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(seed)
        out = []
        self.unet.eval()
        for start in tqdm(range(0, len(pids), batch), desc="DDID phase 1: generation", leave=False, disable=None):
            cond = self._condition(pids[start:start + batch], cams[start:start + batch])
            self.scheduler.set_timesteps(cfg.sample_steps)
            x = torch.randn((cond.shape[1], 3, cfg.height, cfg.width), generator=g).to(self.device)
            out.append(_to_uint8(self._walk(x * self.scheduler.init_noise_sigma, cond), out_size))
        return torch.cat(out) if out else torch.empty((0, 3, *out_size), dtype=torch.uint8)

    @torch.no_grad()
    def resample(self, sources: torch.Tensor, pids: list[int], cams: list[int], out_size: tuple[int, int],
                 seed: int, batch: int = 128) -> torch.Tensor:
        """SDEdit: uint8 `sources` (N, 3, H, W) noised to `sigma_start`, denoised under (pid, target camera).

        The EDM sampler walks `sample_steps` Karras sigmas from `sigma_start` down to zero, so the
        identity's shape and colours survive and the conditioning re-renders the rest.
        """
        cfg = self.cfg
        g = torch.Generator().manual_seed(seed)
        ramp = sdedit_ramp(cfg.sigma_start, cfg.sample_steps)
        x_all = F.interpolate(sources.float().div(255.0), size=(cfg.height, cfg.width), mode="area") * 2 - 1
        out = []
        self.unet.eval()
        for start in tqdm(range(0, len(pids), batch), desc="DDID phase 1: resampling", leave=False, disable=None):
            cond = self._condition(pids[start:start + batch], cams[start:start + batch])
            x0 = x_all[start:start + batch].to(self.device)
            x = x0 + cfg.sigma_start * torch.randn(x0.shape, generator=g).to(self.device)
            self.scheduler.set_timesteps(cfg.sample_steps, sigmas=ramp)
            known = (x0, center_mask(cfg.height, cfg.width, cfg.keep_center).to(self.device), g) \
                if cfg.keep_center > 0 else None
            out.append(_to_uint8(self._walk(x, cond, known), out_size))
        return torch.cat(out) if out else torch.empty((0, 3, *out_size), dtype=torch.uint8)

    def save(self, folder: Path) -> None:
        """Write the generator as a diffusers folder plus its conditioning."""
        self.unet.save_pretrained(folder / "unet")
        self.scheduler.save_pretrained(folder / "scheduler")
        state = {k: v.cpu() for k, v in self.conditioner.state_dict().items()}
        save_tensors(state, folder / "conditioning.safetensors")
        share_tree(folder)  # diffusers writes its own files
        (folder / "conditioning.json").write_text(json.dumps(
            {"id_values": self.id_values, "cam_values": self.cam_values, "config": asdict(self.cfg)}, indent=2))

    @classmethod
    def load(cls, folder: Path, device: torch.device) -> ConditionalEDM:
        """Read a generator folder written by `save`; a damaged one is refused in one line."""
        check_generator_folder(folder)
        from safetensors import SafetensorError

        try:
            return cls._load(folder, device)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
            raise BenchmarkError(f"cannot load the DDID generator in '{folder}' ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}); train a new one by running DDID "
                                 "without --defense-opt generator=...") from None

    @classmethod
    def _load(cls, folder: Path, device: torch.device) -> ConditionalEDM:
        from diffusers import EDMEulerScheduler, UNet2DModel

        meta = json.loads((folder / "conditioning.json").read_text())
        cfg_dict = meta["config"]
        cfg_dict["channels"] = tuple(cfg_dict["channels"])
        obj = cls.__new__(cls)
        obj.cfg = DiffusionConfig(**cfg_dict)
        obj.id_values, obj.cam_values = meta["id_values"], meta["cam_values"]
        obj.unet = UNet2DModel.from_pretrained(folder / "unet").to(device).eval()
        dim = obj.unet.config.block_out_channels[0] * 4
        obj.conditioner = Conditioner(len(obj.id_values), len(obj.cam_values), dim).to(device)
        state = load_file(str(folder / "conditioning.safetensors"))
        if state["ids.weight"].shape[0] != len(obj.id_values) + 1:
            raise BenchmarkError(f"'{folder}' was written by an older DDID phase 1 (no unconditional rows for "
                                 f"guidance); train a new generator (phase-1 version {DiffusionConfig.version}) by "
                                 "running DDID without --defense-opt generator=...")
        obj.conditioner.load_state_dict(state)
        obj.scheduler = EDMEulerScheduler.from_pretrained(folder / "scheduler")
        obj.device = device
        return obj


@dataclass
class BalancedData:
    """Training split plus generated images, the plan and phase 1's manifest."""
    train: SplitTensors
    generated: SplitTensors
    plan: list[tuple[int, int, str]]
    info: dict[str, Any]
    folder: Path


def _save_grid(generated: SplitTensors, train: SplitTensors, path: Path, cols: int = 16) -> None:
    """Generated images (rows 1, 3) above a real training image of the same identity (rows 2, 4),
    so a reader can judge both realism and identity fidelity at a glance."""
    n = min(len(generated), cols * 2)
    if n == 0:
        return
    h, w = generated.images.shape[2:]
    pair_rows = (n + cols - 1) // cols
    grid = np.zeros((2 * pair_rows * h, cols * w, 3), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        real = train.images[torch.nonzero(train.pids == generated.pids[i])[0, 0]]
        for row, img in ((2 * r, generated.images[i]), (2 * r + 1, real)):
            grid[row * h:(row + 1) * h, c * w:(c + 1) * w] = img.permute(1, 2, 0).numpy()
    Image.fromarray(grid).save(path)


def balance(train: SplitTensors, cfg: DiffusionConfig, seed: int, device: torch.device,
            generator_path: str | None = None) -> BalancedData:
    """Phase 1: plan, train (or load) the generator, generate, cache; returns train + generated.

    The cache key holds the data's content hash, the configuration and, for a user's generator,
    the content hash of its folder; the manifest holds a sha256 of every file, verified on load.
    """
    delta1 = cfg.delta1 or median_images_per_id(train.pids)
    plan = balance_plan(train.pids, train.camids, delta1, cfg.delta2)
    # the thread count changes the generator's float sums, hence its images: a cache made at another count
    # would make a run's result depend on what ran before it
    key_src = {"data": split_fingerprint(train), "cfg": asdict(cfg), "version": cfg.version, "seed": seed,
               "generator": sha256_tree(generator_path) if generator_path else None, "numerics": numerics(device)}
    key = fingerprint(key_src)
    folder = cache_dir() / "ddid" / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    out_size = tuple(train.images.shape[2:])
    with FileLock(str(folder.parent / f"{key}.lock")):
        if folder.is_dir() and manifest_intact(folder):
            manifest = json.loads((folder / "manifest.json").read_text())
            tensors = load_file(str(folder / "generated.safetensors"))
            generated = SplitTensors(tensors["images"], tensors["pids"], tensors["camids"])
            manifest["cached"] = True
        else:
            if folder.exists():
                log.warning("DDID phase-1 cache %s does not match its manifest; generating it again", folder)
                remove_folder(folder)
            with atomic_folder(folder) as tmp:
                generated, manifest = _generate(train, cfg, seed, device, generator_path, plan, delta1, out_size, tmp)
                manifest.update(key=key_src,
                                files=file_digests(tmp))
                atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2, default=str))
            manifest["cached"] = False
    merged = SplitTensors(torch.cat([train.images, generated.images]), torch.cat([train.pids, generated.pids]),
                          torch.cat([train.camids, generated.camids]))
    return BalancedData(merged, generated, plan, manifest, folder)


#: the DiffusionConfig fields the generator's training depends on (the others only change how it is sampled)
GENERATOR_FIELDS = ("height", "width", "channels", "train_steps", "batch_size", "lr", "p_mean", "p_std", "sigma_data",
                    "cond_drop")


def trained_generator(train: SplitTensors, cfg: DiffusionConfig, seed: int, device: torch.device,
                      ids: list[int], cams: list[int]) -> tuple[ConditionalEDM, list[float], Path]:
    """The generator for this data, training settings and seed: from the cache, or trained and cached.

    Keyed without the sampling settings, so phase-1 variants (mode, sigma_start, thresholds, filter)
    share one trained generator; its files are verified against their manifest on load.
    """
    key = fingerprint({"data": split_fingerprint(train), "seed": seed, "version": cfg.version,
                       "numerics": numerics(device), **{f: getattr(cfg, f) for f in GENERATOR_FIELDS}})
    folder = cache_dir() / "ddid-generators" / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f"{key}.lock")):
        if folder.is_dir() and manifest_intact(folder):
            log.info("DDID phase 1: conditional diffusion model from the cache (%s)", folder)
            return ConditionalEDM.load(folder, device), json.loads((folder / "losses.json").read_text()), folder
        if folder.exists():
            log.warning("DDID generator cache %s does not match its manifest; training it again", folder)
            remove_folder(folder)
        log.info("DDID phase 1: training the conditional diffusion model (%d steps)", cfg.train_steps)
        # initialised from the seed, not from whatever the process drew before: a cached generator must be a
        # function of its key alone
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            edm = ConditionalEDM(cfg, ids, cams, device)
        losses = edm.fit(train.images, train.pids, train.camids, seed)
        with atomic_folder(folder) as tmp:
            edm.save(tmp)
            atomic_write_text(tmp / "losses.json", json.dumps(losses))
            atomic_write_text(tmp / "manifest.json", json.dumps({"files": file_digests(tmp)}, indent=1))
    return edm, losses, folder


def _generate(train: SplitTensors, cfg: DiffusionConfig, seed: int, device: torch.device,
              generator_path: str | None, plan: list[tuple[int, int, str]], delta1: int,
              out_size: tuple[int, ...], tmp: Path) -> tuple[SplitTensors, dict[str, Any]]:
    start = time.perf_counter()
    if plan:
        images, losses, source, fit_seconds = _run_generator(train, cfg, seed, device, generator_path, plan, delta1,
                                                             out_size, start)
    else:
        # already balanced (PKU-Reid on most splits: 16 images per identity, 8 per camera): no generator. Phase 2
        # sees the same data either way, and the generator draws only from its own seeded RNGs
        log.info("DDID phase 1: the training data are already balanced (delta1=%d, delta2=%.2f): no image to "
                 "generate, no generator trained", delta1, cfg.delta2)
        images, losses, source, fit_seconds = torch.empty((0, 3, *out_size), dtype=torch.uint8), [], None, 0.0
    generated = SplitTensors(images, torch.tensor([p for p, _, _ in plan], dtype=torch.long),
                             torch.tensor([c for _, c, _ in plan], dtype=torch.long))
    save_tensors({"images": generated.images.contiguous(), "pids": generated.pids, "camids": generated.camids},
                 tmp / "generated.safetensors")
    _save_grid(generated, train, tmp / "samples.png")
    manifest = {
        "delta1": delta1, "delta2": cfg.delta2, "generated": len(plan),
        "inter_id": sum(r == "inter-id" for *_, r in plan), "intra_id": sum(r == "intra-id" for *_, r in plan),
        "train_images": len(train), "fit_seconds": fit_seconds,
        "generate_seconds": time.perf_counter() - start - fit_seconds,
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "generator": str(source) if source else None,
    }
    return generated, manifest


def _run_generator(train: SplitTensors, cfg: DiffusionConfig, seed: int, device: torch.device,
                   generator_path: str | None, plan: list[tuple[int, int, str]], delta1: int,
                   out_size: tuple[int, ...], start: float) -> tuple[torch.Tensor, list[float], Path, float]:
    """Train (or load) the generator and make the planned images: (images, losses, generator folder, fit s)."""
    ids = sorted(set(train.pids.tolist()))
    cams = sorted(set(train.camids.tolist()))
    if generator_path:
        edm = ConditionalEDM.load(Path(generator_path), device)
        losses: list[float] = []
        source = Path(generator_path)
    else:
        edm, losses, source = trained_generator(train, cfg, seed, device, ids, cams)
    # the network comes from the generator's own settings, the sampling from this run's
    edm.cfg = dataclasses.replace(edm.cfg, **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                                              if f.name not in GENERATOR_FIELDS})
    fit_seconds = time.perf_counter() - start
    log.info("DDID phase 1: %s %d images (delta1=%d, delta2=%.2f%s)",
             "resampling" if cfg.mode == "resample" else "generating", len(plan), delta1, cfg.delta2,
             (f", sigma_start={cfg.sigma_start:g}, kept centre {cfg.keep_center:g}" if cfg.mode == "resample" else "")
             + f", guidance identity {cfg.id_guidance:g} / camera {cfg.cam_guidance:g}")
    pids, cams = [p for p, _, _ in plan], [c for _, c, _ in plan]
    if cfg.mode == "resample":
        images = edm.resample(source_images(train, plan, seed + 2), pids, cams, out_size, seed + 1)
    else:
        images = edm.sample(pids, cams, out_size, seed + 1)
    return images, losses, source, fit_seconds
