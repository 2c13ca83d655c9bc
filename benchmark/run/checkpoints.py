"""Trained models of a run: the checkpoint key, training (or loading from the cache), deployment.

A checkpoint's key holds everything the weights depend on (recipe, data, backbone, seed, code,
numerics); the deployed model is the defense's test-time transform followed by the ReID model,
and the attack views are that deployed model as each adaptive forward presents it to attackers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch

from benchmark.core.device import numerics
from benchmark.core.distributed import world
from benchmark.core.errors import BenchmarkError
from benchmark.core.hashing import sha256_file, source_digest
from benchmark.core.precision import mixed_precision
from benchmark.core.provenance import training_provenance
from benchmark.core.training import TrainConfig, cached_checkpoint
from benchmark.models import BACKBONES, ModelConfig, ReidModel, extract_embeddings
from benchmark.models.external import ExternalModel, content_hash, load_factory
from benchmark.run.outcome import TrainInfo
from benchmark.run.spec import DefenseSpec, ModelSpec, RunSpec
from benchmark.run.workspace import Workspace
from defenses import DEFENSES, DefendedModel, Defense
from defenses.adaptive import AttackView, select_forwards

log = logging.getLogger("benchmark")


def training_recipe(recipe: DefenseSpec) -> DefenseSpec:
    """The recipe whose checkpoint a defense uses: itself, or the one it `trains_like` (input transforms)."""
    trains_like = DEFENSES.get(recipe.name).trains_like
    if not trains_like:
        return recipe
    return DefenseSpec(trains_like, (), recipe.epochs, recipe.parent)


def checkpoint_payload(recipe: DefenseSpec, defense: Defense, config: dict[str, Any], model_spec: ModelSpec,
                       num_classes: int, seed: int, ws: Workspace, parent_key: str | None, device: torch.device,
                       train_processes: int = 1, amp: str = "off") -> dict[str, Any]:
    """Everything a trained model depends on, code and numerics included: the checkpoint's cache key."""
    tcfg = TrainConfig(epochs=recipe.epochs, seed=seed)
    # a data-parallel model sees other batches (per-rank BatchNorm and triplet mining), a bf16 one other
    # arithmetic: other checkpoints; left out at their defaults so existing keys stay valid
    extra = {**({"world_size": train_processes} if train_processes != 1 else {}),
             **({"amp": amp} if amp != "off" else {})}
    return {**extra, "defense": recipe.name, "defense_config": config, "model": model_spec.identity(),
            # a backbone from another library (timm) is that library's code: its version is part of the key
            **({"backbone_version": v} if (v := BACKBONES.meta(model_spec.backbone).version) else {}),
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
                  model_spec: ModelSpec | None = None, retrain: bool = False, defense: Defense | None = None,
                  config: dict[str, Any] | None = None) -> tuple[ReidModel, TrainInfo]:
    """The trained model of a recipe on this data, from the cache when possible (warm-start parents first).

    `defense` and its `config()` are passed when the caller already has them (built here otherwise);
    a defense that trains like another (an input transform) trains that one's recipe.
    """
    model_spec = model_spec or spec.model
    trained = training_recipe(recipe)
    if defense is None or trained is not recipe:
        defense, config = trained.build(), None
    config = config if config is not None else defense.config()
    recipe = trained
    num_classes = len(torch.unique(ws.train.pids))
    warm_model, parent_key = None, None
    if recipe.parent is not None:
        warm_model, warm_info = train_or_load(recipe.parent, spec, ws, device, model_spec, retrain)
        parent_key = warm_info.checkpoint_key
    key = checkpoint_payload(recipe, defense, config, model_spec, num_classes, spec.seed, ws, parent_key, device,
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

    model, record, folder = cached_checkpoint(key, fit, retrain=retrain)
    info = TrainInfo(str(folder), folder.name, bool(record.get("cached", False)), record.get("train_seconds"),
                     record.get("history") or {}, record.get("provenance") or {}, record.get("key") or key,
                     model_digest=content_hash(model)[:16])
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
    choice = defense.surrogate_choice()
    device = next(deployed.parameters()).device
    return [AttackView(deployed, f).to(device).eval() for f in select_forwards(defense, choice)]




def external_model(model_spec: ModelSpec, device: torch.device, supplied: torch.nn.Module | None = None
                   ) -> tuple[ExternalModel, TrainInfo]:
    """A model the benchmark did not train: the caller's module, or the spec's factory (and weights file) called.

    Its content must still be what the spec names: a module changed since the spec was made is refused.
    """
    if supplied is None:
        if model_spec.factory is None:
            raise BenchmarkError("this run scores a Python model object: pass it to execute(..., model=...) or use "
                                 "benchmark.evaluate(model, ...)")
        supplied = load_factory(model_spec.factory, model_spec.weights_path)
    digest = content_hash(supplied)
    if digest != model_spec.weights_sha256:
        raise BenchmarkError(f"the model's parameters (digest {digest[:12]}) are not the ones its run specification "
                             f"names ({str(model_spec.weights_sha256)[:12]}); build the specification from this model")
    wrapped = ExternalModel(supplied).to(device).eval()
    if wrapped.non_finite():
        raise BenchmarkError(f"the model holds NaN or infinite values in {wrapped.non_finite()[0]}; pass intact "
                             "weights")
    return wrapped, TrainInfo(model_spec.factory or model_spec.source, f"external-{digest[:16]}", cached=True,
                              train_seconds=0.0, key={"external": model_spec.identity()}, model_digest=digest[:16])
