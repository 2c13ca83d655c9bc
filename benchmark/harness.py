"""The standard harness: train (or load) a defense, score clean and attacked queries on unseen IDs.

One call of `run_benchmark` = one defense x backbone on one data set, against a list of attacks
and epsilons. Every adversarial batch is validated; every row is tagged seen/unseen from the
defense's declared training attacks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from attacks import ATTACKS, AttackContext, build_attack
from benchmark.data import ReidDataset, SplitTensors, assert_identity_disjoint, build_dataset
from benchmark.device import resolve_device
from benchmark.enums import Seen
from benchmark.metrics import RetrievalMetrics, evaluate_features
from benchmark.models import ModelConfig, ReidModel, extract_embeddings
from benchmark.training import TrainConfig, cached_checkpoint, split_fingerprint
from benchmark.validity import check_adversarial
from defenses import DEFENSES, DefendedModel, Defense, build_defense

CROSS_DATASET_PID_OFFSET = 1_000_000
log = logging.getLogger("benchmark")


@dataclass
class RunConfig:
    defense: str = "none"
    attacks: str = "none"
    dataset: str = "synthped"
    data_root: str | None = None
    train_dataset: str | None = None
    train_data_root: str | None = None
    backbone: str = "reidnet-s"
    backbone_weights: str | None = None
    eps: tuple[float, ...] = (8 / 255,)
    seed: int = 0
    device: str = "auto"
    epochs: int | None = None
    height: int = 128
    width: int = 64
    metric: str = "euclidean"
    dataset_options: dict[str, str] = field(default_factory=dict)
    defense_options: dict[str, str] = field(default_factory=dict)
    attack_options: dict[str, dict[str, str]] = field(default_factory=dict)
    retrain: bool = False

    def defense_label(self) -> str:
        """The defense's name plus any non-default options, e.g. ddid[ablate=fnes+self-meta]."""
        if not self.defense_options:
            return self.defense
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.defense_options.items()))
        return f"{self.defense}[{opts}]"

    def attack_names(self) -> list[str]:
        if self.attacks.strip() in ("", "none"):
            return []
        return ATTACKS.resolve(self.attacks)


@dataclass
class Workspace:
    """Decoded splits of one run, loaded once and shared by training, attacks and evaluation."""

    dataset: ReidDataset
    train: SplitTensors
    query: SplitTensors
    gallery: SplitTensors
    train_name: str

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.query.images.shape[2:])  # type: ignore[return-value]


def load_workspace(cfg: RunConfig) -> Workspace:
    size = (cfg.height, cfg.width)
    test_ds = build_dataset(cfg.dataset, cfg.data_root, seed=cfg.seed, **cfg.dataset_options)
    query = SplitTensors.from_items(test_ds.query, size)
    gallery = SplitTensors.from_items(test_ds.gallery, size)
    if cfg.train_dataset and cfg.train_dataset != cfg.dataset:
        train_ds = build_dataset(cfg.train_dataset, cfg.train_data_root, seed=cfg.seed)
        train = SplitTensors.from_items(train_ds.train, size)
        # Identities of two data sets are different people even when their numbers collide.
        train.pids = train.pids + CROSS_DATASET_PID_OFFSET
        train_name = train_ds.name
    else:
        train = SplitTensors.from_items(test_ds.train, size)
        train_name = test_ds.name
    assert_identity_disjoint({int(p) for p in train.pids if p > 0},
                             {int(p) for p in torch.cat([query.pids, gallery.pids]) if p > 0},
                             f"run on '{cfg.dataset}'")
    return Workspace(test_ds, train, query, gallery, train_name)


def train_config(cfg: RunConfig, defense: Defense) -> TrainConfig:
    epochs = cfg.epochs if cfg.epochs is not None else defense.default_epochs
    return TrainConfig(epochs=epochs, seed=cfg.seed)


def train_or_load(defense: Defense, cfg: RunConfig, ws: Workspace, device: torch.device,
                  backbone: str | None = None) -> tuple[ReidModel, dict[str, Any]]:
    """The defense's trained model for this data and configuration, from the cache when possible."""
    backbone = backbone or cfg.backbone
    num_classes = len(torch.unique(ws.train.pids))
    trained_as = build_defense(defense.trains_like) if defense.trains_like else defense
    tcfg = train_config(cfg, trained_as)
    model_cfg = ModelConfig(backbone, num_classes, cfg.height, cfg.width)
    key = {"defense": trained_as.name, "defense_config": trained_as.config(), "model": dataclasses.asdict(model_cfg),
           "backbone_weights": cfg.backbone_weights, "train": dataclasses.asdict(tcfg),
           "data": split_fingerprint(ws.train), "train_dataset": ws.train_name}
    warm_model = None
    if trained_as.warm_start:
        base_cfg = dataclasses.replace(cfg, epochs=None, retrain=False)
        warm_model, warm_info = train_or_load(build_defense(trained_as.warm_start), base_cfg, ws, device, backbone)
        key["warm_start"] = Path(warm_info["checkpoint"]).name

    def fit() -> tuple[ReidModel, dict[str, Any]]:
        torch.manual_seed(cfg.seed)
        weights = cfg.backbone_weights if backbone == cfg.backbone else None
        model = ReidModel(model_cfg, backbone_weights=weights).to(device)
        if warm_model is not None:
            model.load_state_dict(warm_model.state_dict())
        start = time.perf_counter()
        log.info("training %s (%s, %d epochs) on %d images", trained_as.name, backbone, tcfg.epochs, len(ws.train))
        history = trained_as.fit(model, ws.train, tcfg, device)
        log.info("trained %s in %.0f s", trained_as.name, time.perf_counter() - start)
        return model.cpu(), {"train_seconds": time.perf_counter() - start, "history": history}

    model, info, folder = cached_checkpoint(key, fit, retrain=cfg.retrain)
    info["checkpoint"] = str(folder)
    return model.to(device).eval(), info


def deploy(defense: Defense, model: ReidModel) -> DefendedModel:
    transform = defense.transform()
    deployed = DefendedModel(model, transform)
    if transform is not None:
        deployed.to(next(model.parameters()).device)
    return deployed.eval()


@dataclass
class AttackResult:
    attack: str
    eps: float
    metrics: RetrievalMetrics
    seen: Seen
    seconds: float
    report: dict[str, Any]
    adversarial: torch.Tensor = field(repr=False)


@dataclass
class RunOutcome:
    cfg: RunConfig
    defense: Defense
    clean: RetrievalMetrics
    attacks: list[AttackResult]
    train_info: dict[str, Any]
    workspace: Workspace = field(repr=False)
    model: DefendedModel = field(repr=False)
    query_feats: torch.Tensor = field(repr=False)
    gallery_feats: torch.Tensor = field(repr=False)


def seen_tag(defense: Defense, attack: str) -> Seen:
    return Seen.SEEN if attack in defense.seen_attacks() else Seen.UNSEEN


def scaled_step(attack_name: str, eps: float) -> dict[str, float]:
    """Epsilon and a step scaled with it, keeping each attack's default step/eps ratio."""
    defaults = ATTACKS.get(attack_name).Options()
    if not hasattr(defaults, "step"):
        return {"eps": eps}
    return {"eps": eps, "step": defaults.step * eps / defaults.eps}


def make_surrogate_builder(cfg: RunConfig, ws: Workspace, device: torch.device) -> Callable[[str], torch.nn.Module]:
    def build(backbone: str) -> torch.nn.Module:
        model, _ = train_or_load(build_defense("none"), cfg, ws, device, backbone=backbone)
        return model

    return build


def run_attack(name: str, eps: float, model: DefendedModel, ws: Workspace, ctx: AttackContext,
               cfg: RunConfig, device: torch.device) -> tuple[torch.Tensor, dict[str, Any], float]:
    options = {**scaled_step(name, eps), **cfg.attack_options.get(name, {})}
    attack = build_attack(name, model, **options)
    ctx.report = {}
    start = time.perf_counter()
    adv = attack.run(ws.query.images, ctx)
    seconds = time.perf_counter() - start
    check_adversarial(adv, ws.query.float_images(), float(attack.options.eps), name, attack.options.norm)
    return adv, dict(ctx.report), seconds


def run_benchmark(cfg: RunConfig, ws: Workspace | None = None, progress: bool = True) -> RunOutcome:
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    attack_names = cfg.attack_names()
    DEFENSES.entry(cfg.defense)
    ws = ws or load_workspace(cfg)
    defense = build_defense(cfg.defense, **cfg.defense_options)
    model, info = train_or_load(defense, cfg, ws, device)
    deployed = deploy(defense, model)
    qf = extract_embeddings(deployed, ws.query.images, device=device)
    gf = extract_embeddings(deployed, ws.gallery.images, device=device)
    clean = evaluate_features(qf, gf, ws.query.pids, ws.gallery.pids, ws.query.camids, ws.gallery.camids,
                              cfg.metric)
    ctx = AttackContext(query_pids=ws.query.pids, query_feats=qf, seed=cfg.seed, gallery_feats=gf,
                        gallery_pids=ws.gallery.pids, train_images=ws.train.images, train_pids=ws.train.pids,
                        surrogate=make_surrogate_builder(cfg, ws, device), target_backbone=cfg.backbone)
    results: list[AttackResult] = []
    jobs = [(a, e) for a in attack_names for e in cfg.eps]
    for name, eps in tqdm(jobs, desc=f"attacks on {cfg.defense}", disable=not progress or None, leave=False):
        adv, report, seconds = run_attack(name, eps, deployed, ws, ctx, cfg, device)
        af = extract_embeddings(deployed, adv, device=device)
        metrics = evaluate_features(af, gf, ws.query.pids, ws.gallery.pids, ws.query.camids, ws.gallery.camids,
                                    cfg.metric)
        results.append(AttackResult(name, eps, metrics, seen_tag(defense, name), seconds, report, adv))
        log.info("attack %-11s eps %-7s mAP %6.2f  R1 %6.2f  (%.1f s)", name, eps_label(eps), metrics.mAP,
                 metrics.rank1, seconds)
    return RunOutcome(cfg, defense, clean, results, info, ws, deployed, qf, gf)


def eps_label(eps: float) -> str:
    """8/255-style label for an epsilon given in [0, 1] units."""
    n = eps * 255
    return f"{round(n)}/255" if math.isclose(n, round(n), abs_tol=1e-6) else f"{n:.3g}/255"


def format_table(outcome: RunOutcome) -> str:
    head = f"{'attack':<12} {'eps':>7} {'seen':>7} {'mAP':>6} {'R1':>6} {'R5':>6} {'R10':>6} {'mINP':>6} {'s':>6}"
    c = outcome.clean
    lines = [head, "-" * len(head),
             f"{'clean':<12} {'-':>7} {'-':>7} {c.mAP:6.2f} {c.rank1:6.2f} {c.rank5:6.2f} {c.rank10:6.2f} "
             f"{c.mINP:6.2f} {'':>6}"]
    for r in outcome.attacks:
        m = r.metrics
        lines.append(f"{r.attack:<12} {eps_label(r.eps):>7} {r.seen.value:>7} {m.mAP:6.2f} {m.rank1:6.2f} "
                     f"{m.rank5:6.2f} {m.rank10:6.2f} {m.mINP:6.2f} {r.seconds:6.1f}")
    return "\n".join(lines)


def _mean_worst(results: list[AttackResult]) -> str:
    if not results:
        return "-"
    maps = [r.metrics.mAP for r in results]
    return f"{sum(maps) / len(maps):.2f}/{min(maps):.2f}"


def format_summary(outcome: RunOutcome) -> str:
    """Robust mAP over all, unseen and seen attacks (mean and worst) per epsilon, as the summary board has it."""
    lines = [f"{'summary':<9} {'eps':>7} {'attacks':>8} {'all mean/worst':>16} {'unseen mean/worst':>19} "
             f"{'seen mean/worst':>17}  worst attack"]
    for eps in sorted({r.eps for r in outcome.attacks}):
        scope = [r for r in outcome.attacks if r.eps == eps]
        worst = min(scope, key=lambda r: r.metrics.mAP)
        lines.append(f"{'':<9} {eps_label(eps):>7} {len(scope):>8} {_mean_worst(scope):>16} "
                     f"{_mean_worst([r for r in scope if r.seen is Seen.UNSEEN]):>19} "
                     f"{_mean_worst([r for r in scope if r.seen is Seen.SEEN]):>17}  {worst.attack}")
    return "\n".join(lines) if len(lines) > 1 else ""


def results_root() -> Path:
    return Path("results")
