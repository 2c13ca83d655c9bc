"""DDID: Debiased Dual-Invariant Defense (arXiv 2511.09933), the reference defense.

Phase 1 balances the training data with a conditional diffusion model (`balancing`). Phase 2 is
bi-adversarial self-meta training: metric PGD towards the farthest negative, softened by FNES
(`fnes`); a feature discriminator played against the encoder (`adversarial_learning`); and a
self-meta step over identity-disjoint meta-train / meta-test halves whose adversarial examples
come from different attacks (`self_meta`). Each part can be ablated (paper Table 3).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmark.core.errors import BenchmarkError
from benchmark.core.hashing import sha256_tree
from benchmark.core.losses import batch_hard_triplet, soft_cross_entropy
from benchmark.core.options import changed_options, option
from benchmark.core.training import TrainConfig, TrainContext, optimize, train_model
from benchmark.data import SplitTensors
from benchmark.models import ReidModel
from defenses.adversarial import eval_mode, farthest_negative_centroids, metric_pgd, self_metric_pgd
from defenses.base import AblationStep, Defense, register_defense
from defenses.ddid.adversarial_learning import FeatureDiscriminator, discriminator_loss, encoder_loss
from defenses.ddid.balancing import DiffusionConfig, balance, check_generator_folder
from defenses.ddid.fnes import FNESConfig, extend_and_mix, soft_targets
from defenses.ddid.quality import phase1_quality
from defenses.ddid.self_meta import identity_split, meta_update

log = logging.getLogger("benchmark")

PARTS = ("diffusion", "adv-learning", "self-meta", "fnes")
#: phase-1 quality figures that go into the leaderboard row (column training_quality)
QUALITY_COLUMNS = ("id_fidelity", "id_top1_real_at_generator_res", "cam_fidelity", "cam_chance")


def _only(*parts: str) -> tuple[str, ...]:
    """The --defense-opt that switches every part off but `parts`."""
    off = [p for p in PARTS if p not in parts]
    return (f"ablate={'+'.join(off)}",) if off else ()


#: the paper's Table 3: each part added alone to DDID's base (metric PGD + soft targets), and all of them; the
#: base row separates what the parts do from how DDID's base differs from the metric-at defense
TABLE3 = (
    AblationStep("metric-at", "metric-at"),
    AblationStep("DDID base (all parts off)", "ddid", _only(), versus="metric-at"),
    AblationStep("+ diffusion", "ddid", _only("diffusion"), versus="DDID base (all parts off)"),
    AblationStep("+ adversarial learning", "ddid", _only("adv-learning"), versus="DDID base (all parts off)"),
    AblationStep("+ self-meta", "ddid", _only("self-meta"), versus="DDID base (all parts off)"),
    AblationStep("+ FNES", "ddid", _only("fnes"), versus="DDID base (all parts off)"),
    AblationStep("all parts (DDID)", "ddid", _only(*PARTS), versus="metric-at"),
)


@dataclass(frozen=True)
class DDIDOptions:
    """DDID's options; FNES and phase-1 settings are nested and set by their own names (gamma=2, delta2=0.7)."""

    eps: float = option(8 / 255, above=0, high=1)
    step: float = option(2 / 255, above=0, high=1)
    steps: int = option(5, low=1, high=1000)
    fnes: FNESConfig = field(default_factory=FNESConfig)
    #: lambda_e and meta_split: chosen by `sweep --tune ddid`
    lambda_e: float = option(0.3, low=0, high=100)
    #: share of a batch's identities in meta-train (the rest: meta-test)
    meta_split: float = option(0.67, above=0, below=1)
    second_order: bool = False
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    generator: str = ""      # a DDID generator folder to use instead of training one (its content is hashed)
    ablate: tuple = ()       # parts switched off: diffusion, adv-learning, self-meta, fnes


@register_defense("ddid", kind="reference", paper="DDID, arXiv 2511.09933")
class DDID(Defense):
    """Diffusion balancing + bi-adversarial self-meta training (metric PGD/FNES, discriminator, meta split)."""

    trains_with = ("fna", "sma")
    Options = DDIDOptions
    default_epochs = 10
    warm_start = "none"
    ablation = TABLE3
    #: what `sweep --tune` may move (the paper leaves these open), values as --defense-opt takes them
    search_space = {"gamma": ("1.5", "2", "3"), "a": ("0", "0.25"), "b": ("0.75", "1"),
                    "lambda2": ("0.3", "0.5", "0.7"), "upsilon": ("0.1", "0.2", "0.3"),
                    "delta1": ("0", "10"), "delta2": ("0.6", "0.7", "0.8"),
                    "lambda_e": ("0.05", "0.1", "0.3"), "meta_split": ("0.33", "0.5", "0.67")}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        unknown = set(self.options.ablate) - set(PARTS)
        if unknown:
            raise BenchmarkError(f"unknown DDID part(s) {', '.join(sorted(unknown))} in --defense-opt ablate=...; "
                                 f"valid parts: {', '.join(PARTS)}")
        if self.options.generator:
            check_generator_folder(Path(self.options.generator))
        self.fnes_cfg = self.options.fnes

    def uses(self, part: str) -> bool:
        """False when the part is ablated."""
        return part not in self.options.ablate

    def seen_attacks(self) -> tuple[str, ...]:
        # meta-train: metric PGD towards the farthest negative (fna); meta-test: self-metric (sma)
        return ("fna", "sma") if self.uses("self-meta") else ("fna",)

    def config(self) -> dict[str, Any]:
        """Every option plus the phase-1 version and generator hash."""
        cfg = dataclasses.asdict(self.options)
        cfg["ablate"] = sorted(self.options.ablate)
        # part of the checkpoint key: a changed generator must not reuse models trained on old images
        cfg["diffusion_version"] = DiffusionConfig.version
        if self.options.generator:
            cfg["generator_sha256"] = sha256_tree(self.options.generator)
        return cfg

    def training_extras(self, model: ReidModel, lr: float, device: torch.device) -> dict[str, Any]:
        """The feature discriminator and its optimiser, played against the encoder."""
        disc = FeatureDiscriminator(model.embedding_dim).to(device)
        return {"disc": disc, "disc_opt": torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))}

    def throughput_variant(self) -> DDID:
        """Phase 2 alone: a training step's cost, without phase 1's one-off generation."""
        return DDID(**{**dict(changed_options(self.options)), "ablate": tuple(sorted({*self.options.ablate,
                                                                                     "diffusion"}))})

    # -- phase 1 + 2 ----------------------------------------------------------------------------
    def fit(self, model: ReidModel, train: SplitTensors, cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
        """Phase 1 (unless ablated), then phase 2."""
        history: dict[str, Any] = {}
        if self.uses("diffusion"):
            o = self.options
            balanced = balance(train, o.diffusion, cfg.seed, device, o.generator or None)
            # judged by the warm-start model, before phase 2 changes it
            quality = phase1_quality(model, train, balanced.generated, o.diffusion, device, cfg.seed)
            keep = quality.pop("_keep", None)
            generated = balanced.generated
            if o.diffusion.id_filter and keep is not None:
                generated = SplitTensors(generated.images[keep], generated.pids[keep], generated.camids[keep])
            log.info("DDID phase 1 (%s): identity fidelity %.1f%% (real images %.1f%%, at the generator's "
                     "resolution %.1f%%), camera fidelity %.1f%% (real %.1f%%, chance %.1f%%; %.1f%% on the %d "
                     "images the identity filter keeps); %d of %d images used%s", o.diffusion.mode,
                     quality.get("id_fidelity", 0.0), quality.get("id_top1_real", 0.0),
                     quality.get("id_top1_real_at_generator_res", 0.0), quality.get("cam_fidelity", 0.0),
                     quality.get("cam_top1_real_held_out", 0.0), quality.get("cam_chance", 0.0),
                     quality.get("cam_fidelity_kept", 0.0), quality.get("kept_by_id_filter", 0), len(generated),
                     len(balanced.generated), " (identity filter)" if o.diffusion.id_filter else "")
            train = SplitTensors(torch.cat([train.images, generated.images]), torch.cat([train.pids, generated.pids]),
                                 torch.cat([train.camids, generated.camids]))
            history["phase1"] = {**balanced.info, **quality, "used": len(generated), "folder": str(balanced.folder)}
            d = o.diffusion
            # the phase-1 settings travel with its fidelity figures into every leaderboard row
            settings = {"mode": d.mode, "resolution": f"{d.height}x{d.width}", "diffusion_steps": d.train_steps,
                        "sample_steps": d.sample_steps, **({"sigma_start": d.sigma_start} if d.mode == "resample"
                                                            else {}),
                        "id_guidance": d.id_guidance, "cam_guidance": d.cam_guidance}
            history["quality"] = settings | {k: quality[k] for k in QUALITY_COLUMNS if k in quality} | {
                "used": len(generated)}
            history["artifacts"] = {"phase1-samples.png": str(balanced.folder / "samples.png")}
        history["phase2"] = train_model(model, train, cfg, self.train_step, device, desc="ddid",
                                        extra=self.training_extras(model, cfg.lr, device))
        return history

    # -- one training step ------------------------------------------------------------------------
    def adversarial(self, model: ReidModel, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext, kind: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adversarial images and their (soft) targets for one half of the batch."""
        o = self.options
        if kind == "metric":
            x_hat, far = metric_pgd(model, x, y, o.eps, o.step, o.steps, ctx.generator)
        else:
            x_hat = self_metric_pgd(model, x, o.eps, o.step, o.steps, ctx.generator)
            with eval_mode(model), torch.no_grad():
                _, far = farthest_negative_centroids(model.embed(x), y)
        if not self.uses("fnes"):
            return x_hat, F.one_hot(y, ctx.num_classes).float()
        x_adv, omega = extend_and_mix(x, x_hat, self.fnes_cfg, ctx.generator)
        return x_adv, soft_targets(y, far, omega, ctx.num_classes, self.fnes_cfg)

    def objective(self, call: Any, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, targets: torch.Tensor,
                  ctx: TrainContext, store: dict[str, torch.Tensor]) -> torch.Tensor:
        """CE (clean, label smoothing) + soft CE (adversarial) + triplets + lambda_E * L_E."""
        out = call(torch.cat([x, x_adv]))
        n = len(x)
        logits_c, logits_a = out.logits[:n], out.logits[n:]
        loss = F.cross_entropy(logits_c, y, label_smoothing=ctx.cfg.label_smoothing)
        loss = loss + soft_cross_entropy(logits_a, targets)
        loss = loss + batch_hard_triplet(out.features[:n], y, ctx.cfg.margin)
        loss = loss + batch_hard_triplet(out.features[n:], y, ctx.cfg.margin)
        if self.uses("adv-learning"):
            loss = loss + self.options.lambda_e * encoder_loss(ctx.extra["disc"], out.embedding[n:])
        store.setdefault("clean", []).append(out.embedding[:n].detach())
        store.setdefault("adv", []).append(out.embedding[n:].detach())
        return loss

    def train_step(self, model: ReidModel, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> dict[str, float]:
        """One bi-adversarial (self-meta) step."""
        store: dict[str, Any] = {}
        logs: dict[str, float] = {}
        if self.uses("self-meta"):
            mtr, mte = identity_split(y, ctx.generator, self.options.meta_split)
            xa_tr, t_tr = self.adversarial(model, x[mtr], y[mtr], ctx, "metric")
            xa_te, t_te = self.adversarial(model, x[mte], y[mte], ctx, "self")
            alpha = ctx.optimizer.param_groups[0]["lr"]
            l_tr, l_te = meta_update(
                model, ctx.optimizer, alpha, self.options.second_order,
                lambda call: self.objective(call, x[mtr], xa_tr, y[mtr], t_tr, ctx, store),
                lambda call: self.objective(call, x[mte], xa_te, y[mte], t_te, ctx, store))
            logs.update(meta_train=l_tr, meta_test=l_te)
        else:
            x_adv, targets = self.adversarial(model, x, y, ctx, "metric")
            logs.update(optimize(self.objective(model, x, x_adv, y, targets, ctx, store), ctx))
        if self.uses("adv-learning"):
            disc, disc_opt = ctx.extra["disc"], ctx.extra["disc_opt"]
            d_loss = discriminator_loss(disc, torch.cat(store["clean"]), torch.cat(store["adv"]))
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_opt.step()
            logs["disc"] = d_loss.item()
        return logs
