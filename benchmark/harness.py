"""The standard harness: train (or load) a defense, score clean and attacked queries on unseen IDs.

One call of `run_benchmark` = one RunSpec: a defense x backbone on one data set, against a list of
attacks and epsilons. The threat model and the model's state belong to the harness: every
adversarial batch is validated against the spec's ε and norm, attacks get copies of shared
tensors, and the model's parameters and buffers are checked unchanged after each attack. Each
finished (attack, ε) cell is stored in the cache as it completes, so a killed run resumes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from attacks import ATTACKS, AttackContext, build_attack
from benchmark.atomic import atomic_folder, atomic_write_text, remove_folder
from benchmark.data import ReidDataset, SplitTensors, assert_identity_disjoint, build_dataset
from benchmark.device import numerics, resolve_device
from benchmark.distributed import from_main, gather_objects, sharded_attack, world
from benchmark.enums import Seen
from benchmark.errors import AttackValidityError, BenchmarkError, RunInterrupted
from benchmark.hashing import fingerprint, module_state_digest, sha256_file, source_digest, tensor_digest
from benchmark.holdout import validation_dataset
from benchmark.metrics import RetrievalMetrics, evaluate_features
from benchmark.models import BACKBONES, ModelConfig, ReidModel, extract_embeddings
from benchmark.paths import cache_dir
from benchmark.precision import mixed_precision
from benchmark.provenance import training_provenance
from benchmark.spec import DataSpec, DefenseSpec, ModelSpec, RunSpec
from benchmark.training import TrainConfig, cached_checkpoint, split_fingerprint
from benchmark.validity import check_adversarial
from defenses import DEFENSES, DefendedModel, Defense
from defenses.adaptive import AttackView, select_forwards

CROSS_DATASET_PID_OFFSET = 1_000_000
log = logging.getLogger("benchmark")


@dataclass
class Runtime:
    """How a run executes; nothing here changes its numbers."""

    device: str = "auto"
    retrain: bool = False
    progress: bool = True


@dataclass
class Workspace:
    """Decoded splits of one run, loaded once and shared by training, attacks and evaluation."""

    dataset: ReidDataset
    train: SplitTensors
    query: SplitTensors
    gallery: SplitTensors
    train_name: str
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the run's images."""
        return tuple(self.query.images.shape[2:])  # type: ignore[return-value]


def _build(data: DataSpec, seed: int) -> ReidDataset:
    return build_dataset(data.name, data.root, seed=seed, options=data.options_object())


def load_workspace(spec: RunSpec) -> Workspace:
    """Load (or generate) the data of a run at the spec's input size and hash every split."""
    size = (spec.model.height, spec.model.width)
    test_ds = _build(spec.data, spec.seed)
    query = SplitTensors.from_items(test_ds.query, size)
    gallery = SplitTensors.from_items(test_ds.gallery, size)
    if spec.train_data is not None:
        train_ds = _build(spec.train_data, spec.seed)
        train = SplitTensors.from_items(train_ds.train, size)
        # Identities of two data sets are different people even when their numbers collide.
        train.pids = train.pids + CROSS_DATASET_PID_OFFSET
        train_name = spec.train_data.label
    else:
        train = SplitTensors.from_items(test_ds.train, size)
        train_name = spec.data.label
    if spec.split == "validation":  # tuning: score held-out training identities, never the test set
        if spec.train_data is not None:
            raise BenchmarkError("--split validation holds identities out of the test data set's own training split: "
                                 "drop --train-dataset")
        test_ds, train, query, gallery = validation_dataset(test_ds, train)
    assert_identity_disjoint({int(p) for p in train.pids if p > 0},
                             {int(p) for p in torch.cat([query.pids, gallery.pids]) if p > 0},
                             f"run on '{spec.data.name}'")
    digests = {name: split_fingerprint(split) for name, split in
               (("train", train), ("query", query), ("gallery", gallery))}
    return Workspace(test_ds, train, query, gallery, train_name, digests)


# -- training ----------------------------------------------------------------------------------------
def training_recipe(recipe: DefenseSpec) -> DefenseSpec:
    """The recipe whose checkpoint a defense uses: itself, or the one it `trains_like` (input transforms)."""
    defense = recipe.build()
    if not defense.trains_like:
        return recipe
    return DefenseSpec(defense.trains_like, (), recipe.epochs, recipe.parent)


def checkpoint_payload(recipe: DefenseSpec, defense: Defense, model_spec: ModelSpec, num_classes: int, seed: int,
                       ws: Workspace, parent_key: str | None, device: torch.device, train_processes: int = 1,
                       amp: str = "off") -> dict[str, Any]:
    """Everything a trained model depends on, code and numerics included: the checkpoint's cache key."""
    tcfg = TrainConfig(epochs=recipe.epochs, seed=seed)
    # a data-parallel model sees other batches (per-rank BatchNorm and triplet mining), a bf16 one other
    # arithmetic: other checkpoints; left out at their defaults so existing keys stay valid
    extra = {**({"world_size": train_processes} if train_processes != 1 else {}),
             **({"amp": amp} if amp != "off" else {})}
    return {**extra, "defense": recipe.name, "defense_config": defense.config(), "model": model_spec.identity(),
            "num_classes": num_classes, "train": dataclasses.asdict(tcfg), "data": ws.digests["train"],
            "train_dataset": ws.train_name, "parent": parent_key, "numerics": numerics(device),
            "code": source_digest(type(defense), BACKBONES.get(model_spec.backbone))}


def check_training_world(spec: RunSpec, key: dict[str, Any]) -> None:
    """Refuse to train a checkpoint in a process group other than the one its key names (one line, before work)."""
    size = world().size
    if size == spec.train_processes:
        return
    cmd = (f"torchrun --nproc-per-node {spec.train_processes} -m benchmark train"
           if spec.train_processes > 1 else "python -m benchmark train")
    raise BenchmarkError(f"checkpoint of '{key['defense']}' trained with {spec.train_processes} process(es) is not "
                         f"in the cache and this launch has {size}; train it first with `{cmd}` and the same "
                         "options, or pass --train-processes to match this launch")


def embed(model: torch.nn.Module, images: torch.Tensor, spec: RunSpec, device: torch.device) -> torch.Tensor:
    """Float32 embeddings of images, extracted under the run's precision."""
    with mixed_precision(spec.amp, device):
        return extract_embeddings(model, images, device=device)


def _probe_finite(model: ReidModel, ws: Workspace, device: torch.device) -> None:
    emb = extract_embeddings(model, ws.train.images[:32], device=device)
    if not torch.isfinite(emb).all():
        raise BenchmarkError("training produced non-finite embeddings; nothing was cached. Lower the learning "
                             "rate or check the defense's loss")


def train_or_load(recipe: DefenseSpec, spec: RunSpec, ws: Workspace, device: torch.device,
                  model_spec: ModelSpec | None = None, retrain: bool = False) -> tuple[ReidModel, dict[str, Any]]:
    """The trained model of a recipe on this data, from the cache when possible (warm-start parents first)."""
    model_spec = model_spec or spec.model
    recipe = training_recipe(recipe)
    defense = recipe.build()
    num_classes = len(torch.unique(ws.train.pids))
    warm_model, parent_key = None, None
    if recipe.parent is not None:
        warm_model, warm_info = train_or_load(recipe.parent, spec, ws, device, model_spec, retrain)
        parent_key = warm_info["checkpoint_key"]
    key = checkpoint_payload(recipe, defense, model_spec, num_classes, spec.seed, ws, parent_key, device,
                             spec.train_processes, spec.amp)

    def fit() -> tuple[ReidModel, dict[str, Any]]:
        torch.manual_seed(spec.seed)
        model = ReidModel(ModelConfig(model_spec.backbone, num_classes, model_spec.height, model_spec.width),
                          backbone_weights=model_spec.weights_path).to(device)
        if model_spec.weights_path and sha256_file(model_spec.weights_path) != model_spec.weights_sha256:
            raise BenchmarkError(f"backbone weights '{model_spec.weights_path}' changed while the run started; "
                                 "run again")
        if warm_model is not None:
            model.load_state_dict(warm_model.state_dict())
        check_training_world(spec, key)
        start = time.perf_counter()
        log.info("training %s (%s, %d epochs) on %d images%s", recipe.label, model_spec.backbone, recipe.epochs,
                 len(ws.train), f" in {spec.train_processes} processes" if spec.train_processes > 1 else "")
        with mixed_precision(spec.amp, device, model):
            history = defense.fit(model, ws.train, TrainConfig(epochs=recipe.epochs, seed=spec.seed), device)
        seconds = time.perf_counter() - start
        log.info("trained %s in %.0f s", recipe.label, seconds)
        if not model.non_finite():
            _probe_finite(model, ws, device)
        return model.cpu(), {"train_seconds": seconds, "history": history,
                             "provenance": training_provenance(device, spec.seed)}

    model, info, folder = cached_checkpoint(key, fit, retrain=retrain)
    info["checkpoint"] = str(folder)
    info["checkpoint_key"] = folder.name
    return model.to(device).eval(), info


def deploy(defense: Defense, model: ReidModel) -> DefendedModel:
    """The model as the evaluator sees it: the defense's test-time transform, then the ReID model."""
    transform = defense.transform()
    deployed = DefendedModel(model, transform)
    if transform is not None:
        deployed.to(next(model.parameters()).device)
    return deployed.eval()


def attack_views(defense: Defense, deployed: DefendedModel) -> list[AttackView]:
    """The deployed model as white-box attackers see it, one view per adaptive forward (strongest first)."""
    choice = getattr(defense.options, "surrogate", "auto")
    device = next(deployed.parameters()).device
    return [AttackView(deployed, f).to(device).eval() for f in select_forwards(defense, choice)]


# -- attacks -------------------------------------------------------------------------------------------
@dataclass
class AttackResult:
    """Scores and outputs of one (attack, ε) cell."""
    attack: str
    eps: float
    metrics: RetrievalMetrics
    seen: Seen
    seconds: float
    report: dict[str, Any]
    adversarial: torch.Tensor = field(repr=False)
    resumed: bool = False
    #: adaptive forward the attack differentiated through ('' for aggregates)
    forward: str = ""


@dataclass
class RunOutcome:
    """Everything a run produced, for printing and writing."""
    spec: RunSpec
    defense: Defense
    clean: RetrievalMetrics
    attacks: list[AttackResult]
    train_info: dict[str, Any]
    workspace: Workspace = field(repr=False)
    model: DefendedModel = field(repr=False)
    query_feats: torch.Tensor = field(repr=False)
    gallery_feats: torch.Tensor = field(repr=False)
    #: white-box views of the deployed model, one per adaptive forward (the first is the attacks')
    views: list[AttackView] = field(repr=False, default_factory=list)
    #: per-query worst cases: the suite's (`standard-v1`) and, with two or more sources, the run's (`worst-case`)
    aggregates: list[AttackResult] = field(default_factory=list)

    @property
    def resumed(self) -> int:
        """How many attack cells came from the cache."""
        return sum(r.resumed for r in self.attacks)

    @property
    def attacked_with(self) -> str:
        """How white-box attacks reached the model: the adaptive forwards' names joined by '+'."""
        return "+".join(v.surrogate_name for v in self.views) or "direct"


def seen_tag(defense: Defense, attack: str) -> Seen:
    """`seen` when the defense trains with the attack, else `unseen`."""
    return Seen.SEEN if attack in defense.seen_attacks() else Seen.UNSEEN


def scaled_options(name: str, eps: float, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """ε, a step scaled with it (keeping the attack's default step/ε ratio), then `options`."""
    defaults = ATTACKS.get(name).Options()
    scaled: dict[str, Any] = {"eps": eps}
    if hasattr(defaults, "step"):
        scaled["step"] = defaults.step * eps / defaults.eps
    return {**scaled, **(options or {})}


def attack_options(spec: RunSpec, name: str, eps: float) -> dict[str, Any]:
    """ε from the run, a step scaled with it, then the user's options of that attack."""
    return scaled_options(name, eps, dict(spec.attack(name).options))


def make_surrogate_builder(spec: RunSpec, ws: Workspace, device: torch.device) -> Callable[..., torch.nn.Module]:
    """Undefended models of a backbone, trained from the run's seed plus an offset (cached), for transfer attacks."""
    def build(backbone: str, seed_offset: int = 0) -> torch.nn.Module:
        surrogate = ModelSpec(backbone, spec.model.height, spec.model.width)
        recipe = DefenseSpec("none", (), DEFENSES.get("none").default_epochs)
        # same data (the workspace), another initialisation and batch order
        model, _ = train_or_load(recipe, dataclasses.replace(spec, seed=spec.seed + seed_offset), ws, device,
                                 surrogate)
        return model

    return build


def attack_context(spec: RunSpec, ws: Workspace, qf: torch.Tensor, gf: torch.Tensor,
                   device: torch.device) -> AttackContext:
    """A fresh context holding copies of every shared tensor: an attack cannot alter what later ones see."""
    return AttackContext(query_pids=ws.query.pids.clone(), query_feats=qf.clone(), seed=spec.seed,
                         gallery_feats=gf.clone(), gallery_pids=ws.gallery.pids.clone(),
                         train_images=ws.train.images.clone(), train_pids=ws.train.pids.clone(),
                         surrogate=make_surrogate_builder(spec, ws, device), target_backbone=spec.model.backbone,
                         query_camids=ws.query.camids.clone(), gallery_camids=ws.gallery.camids.clone(),
                         metric=spec.metric)


def run_attack(name: str, eps: float, model: torch.nn.Module, ws: Workspace, ctx: AttackContext, spec: RunSpec,
               clean: torch.Tensor, options: dict[str, Any] | None = None, indices: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, dict[str, Any], float]:
    """Run one attack over the query set (or the queries `indices`) and enforce the threat model and model integrity."""
    attack = build_attack(name, model, **(options if options is not None else attack_options(spec, name, eps)))
    if not math.isclose(float(attack.options.eps), eps, rel_tol=0, abs_tol=1e-9) or attack.options.norm != spec.norm:
        raise AttackValidityError(f"attack '{name}' set its own threat model (eps={attack.options.eps:.6f}, "
                                  f"norm={attack.options.norm}); the run's is eps={eps:.6f}, norm={spec.norm}; "
                                  "result refused")
    state, mode = module_state_digest(model), model.training
    ctx.report = {}
    start = time.perf_counter()
    images = ws.query.images.clone()
    # under torchrun each rank attacks whole batches of the queries; one process attacks them all
    # attacks run in float32 whatever the run's --amp: a bf16 gradient would be a weaker attack
    with torch.autocast(attack.device.type, enabled=False):
        adv = sharded_attack(lambda idx: attack.run(images, ctx, idx),
                             torch.arange(len(images)) if indices is None else indices, attack.batch_size)
    seconds = time.perf_counter() - start
    reports = gather_objects(dict(ctx.report))
    if any(r != reports[0] for r in reports):
        ctx.report = {**reports[0], "shards": reports}
    seconds = max(gather_objects(seconds))
    if module_state_digest(model) != state or model.training != mode:
        raise AttackValidityError(f"attack '{name}' changed the model (parameters, buffers such as BatchNorm "
                                  "statistics, or train/eval mode); result refused")
    check_adversarial(adv, clean if indices is None else clean[indices], eps, name, spec.norm)
    return adv, dict(ctx.report), seconds


class CellStore:
    """Finished (attack, ε) cells of runs, in the cache: adversarial queries plus what the attack reported.

    A cell's key holds the checkpoint, the deployed defense, the attack with its options, ε, seed,
    the data and the code of attacks and defenses; its files are verified by sha256 on load.
    """

    def __init__(self, spec: RunSpec, checkpoint_key: str, defense: Defense, ws: Workspace,
                 device: torch.device) -> None:
        self.root = cache_dir() / "cells"
        self.base = {"checkpoint": checkpoint_key, "numerics": numerics(device), "defense": spec.defense.identity(),
                     "defense_config": defense.config(), "seed": spec.seed, "norm": spec.norm,
                     "data": ws.digests, "defense_code": source_digest(type(defense))}

    def key(self, name: str, eps: float, options: dict[str, Any], forward: str = "", **extra: Any) -> str:
        """The cache key of one attack cell (`extra`: a suite member's suite, position and attacked queries)."""
        cls = ATTACKS.get(name)
        return fingerprint({**self.base, "attack": name, "options": options, "eps": round(eps * 255, 6),
                            "attack_code": source_digest(cls), "forward": forward, **extra})

    def load(self, key: str) -> tuple[torch.Tensor, dict[str, Any], float] | None:
        """A verified cached cell, or None (a damaged one is removed); under torchrun, rank 0's answer for all."""
        return from_main(lambda: self._load(key))

    def _load(self, key: str) -> tuple[torch.Tensor, dict[str, Any], float] | None:
        folder = self.root / key
        try:
            record = json.loads((folder / "cell.json").read_text())
            if sha256_file(folder / "adv.safetensors") != record["sha256"]:
                raise ValueError("sha256 mismatch")
            adv = load_file(str(folder / "adv.safetensors"))["adv"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("cached attack cell %s is damaged (%s); running it again", key, exc)
            remove_folder(folder)
            return None
        return adv, record["report"], float(record["seconds"])

    def save(self, key: str, adv: torch.Tensor, report: dict[str, Any], seconds: float) -> None:
        """Store a finished cell atomically (a concurrent writer's copy is kept); under torchrun rank 0 writes."""
        if not world().is_main:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / f"{key}.lock")):
            if (self.root / key).is_dir():
                return
            with atomic_folder(self.root / key) as tmp:
                save_file({"adv": adv.contiguous()}, str(tmp / "adv.safetensors"))
                record = {"sha256": sha256_file(tmp / "adv.safetensors"), "report": report, "seconds": seconds,
                          "digest": tensor_digest([adv])[:16]}
                atomic_write_text(tmp / "cell.json", json.dumps(record, default=str))


def run_benchmark(spec: RunSpec, runtime: Runtime | None = None, ws: Workspace | None = None) -> RunOutcome:
    """Train or load the defense, score clean queries, then every (attack, ε) cell, resuming cached cells."""
    runtime = runtime or Runtime()
    torch.manual_seed(spec.seed)
    device = resolve_device(runtime.device)
    ws = ws or load_workspace(spec)
    defense = spec.defense.build()
    model, info = train_or_load(spec.defense, spec, ws, device, retrain=runtime.retrain)
    deployed = deploy(defense, model)
    qf = embed(deployed, ws.query.images, spec, device)
    gf = embed(deployed, ws.gallery.images, spec, device)
    if not (torch.isfinite(qf).all() and torch.isfinite(gf).all()):
        raise BenchmarkError(f"defense '{spec.defense.label}' gives non-finite embeddings; its checkpoint "
                             f"{info['checkpoint']} is unusable, rerun with --retrain")
    clean = evaluate_features(qf, gf, ws.query.pids, ws.gallery.pids, ws.query.camids, ws.gallery.camids,
                              spec.metric)
    cells = CellStore(spec, info["checkpoint_key"], defense, ws, device)
    views = attack_views(defense, deployed)
    results: list[AttackResult] = []
    aggregates: list[AttackResult] = []
    jobs = [(a.name, e) for a in spec.attacks for e in spec.eps]
    clean_images = ws.query.float_images()  # what every cell's output is checked against
    outcome = RunOutcome(spec, defense, clean, results, info, ws, deployed, qf, gf, views, aggregates)
    try:
        for name, eps in tqdm(jobs, desc=f"attacks on {spec.defense.label}", disable=not runtime.progress or None,
                              leave=False):
            options = attack_options(spec, name, eps)
            key = cells.key(name, eps, options, views[0].surrogate_name)
            cached = cells.load(key)
            if cached is not None:
                adv, report, seconds = cached
                check_adversarial(adv, clean_images, eps, name, spec.norm)
            else:
                ctx = attack_context(spec, ws, qf, gf, device)
                adv, report, seconds = run_attack(name, eps, views[0], ws, ctx, spec, clean_images)
                cells.save(key, adv, report, seconds)
            af = embed(deployed, adv, spec, device)
            metrics = evaluate_features(af, gf, ws.query.pids, ws.gallery.pids, ws.query.camids, ws.gallery.camids,
                                        spec.metric)
            results.append(AttackResult(name, eps, metrics, seen_tag(defense, name), seconds, report, adv,
                                        resumed=cached is not None, forward=views[0].surrogate_name))
            log.info("attack %-11s eps %-7s mAP %6.2f  R1 %6.2f  (%s)", name, eps_label(eps), metrics.mAP,
                     metrics.rank1, "from the cache" if cached is not None else f"{seconds:.1f} s")
        if spec.suite is not None:
            from benchmark.suite_runner import run_suites

            aggregates.extend(run_suites(outcome, cells, clean_images, runtime))
    except KeyboardInterrupt:
        raise RunInterrupted(f"interrupted after {len(results)} of {len(jobs)} attack cells; finished cells are "
                             "cached, run the same command again to resume") from None
    from benchmark.suite_runner import run_worst_cases

    aggregates.extend(run_worst_cases(outcome))
    resumed = sum(r.resumed for r in results)
    if resumed:
        log.info("resumed: %d of %d attack cells came from the cache", resumed, len(jobs))
    return outcome


def eps_label(eps: float) -> str:
    """8/255-style label for an epsilon given in [0, 1] units."""
    n = eps * 255
    return f"{round(n)}/255" if math.isclose(n, round(n), abs_tol=1e-6) else f"{n:.3g}/255"


def format_table(outcome: RunOutcome) -> str:
    """The per-attack table a run prints."""
    head = f"{'attack':<12} {'eps':>7} {'seen':>7} {'mAP':>6} {'R1':>6} {'R5':>6} {'R10':>6} {'mINP':>6} {'s':>6}"
    c = outcome.clean
    lines = [head, "-" * len(head),
             f"{'clean':<12} {'-':>7} {'-':>7} {c.mAP:6.2f} {c.rank1:6.2f} {c.rank5:6.2f} {c.rank10:6.2f} "
             f"{c.mINP:6.2f} {'':>6}"]
    for r in outcome.attacks + outcome.aggregates:
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
    for r in outcome.aggregates:
        note = r.report.get("convergence")
        extra = (f"; doubled APGD iterations: {note['mAP']:.2f} ({note['delta']:+.2f})" if note else "")
        lines.append(f"per-query worst case {r.attack:<12} {eps_label(r.eps):>7}  mAP {r.metrics.mAP:6.2f}  "
                     f"R1 {r.metrics.rank1:6.2f}{extra}")
    return "\n".join(lines) if len(lines) > 1 else ""
