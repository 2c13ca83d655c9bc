"""Attack cells: one attack at one ε over the query set, run under the harness's checks and cached.

The threat model and the model's state belong to the harness: every adversarial batch is
validated against the spec's ε and norm, attacks get copies of shared tensors, and the model's
parameters and buffers are checked unchanged after each attack. Each finished (attack, ε) cell is
stored in the cache as it completes, so a killed run resumes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from filelock import FileLock
from safetensors.torch import load_file

from attacks import ATTACKS, AttackContext, build_attack
from benchmark.core.atomic import atomic_folder, atomic_write_text, remove_folder, save_tensors
from benchmark.core.device import numerics
from benchmark.core.distributed import from_main, gather_objects, sharded_attack, world
from benchmark.core.errors import AttackValidityError
from benchmark.core.hashing import fingerprint, module_state_digest, sha256_file, source_digest, tensor_digest
from benchmark.core.paths import cache_dir
from benchmark.run.checkpoints import train_or_load
from benchmark.run.spec import DefenseSpec, ModelSpec, RunSpec
from benchmark.run.validity import check_adversarial
from benchmark.run.workspace import Workspace
from defenses import DEFENSES, Defense

log = logging.getLogger("benchmark")


def scaled_options(name: str, eps: float, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """ε, a step scaled with it (keeping the attack's default step/ε ratio), then `options`."""
    cls = ATTACKS.get(name)
    defaults = cls.Options()
    scaled: dict[str, Any] = {"eps": eps}
    if cls.has_option("step"):
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


def attack_context(spec: RunSpec, ws: Workspace, qf: torch.Tensor, gf: torch.Tensor, device: torch.device,
                   attack: str) -> AttackContext:
    """A fresh context holding copies of every shared tensor: an attack cannot alter what later ones see.

    The training split (copied whole) goes only to attacks that declare `uses_training_split`.
    """
    learns = ATTACKS.get(attack).uses_training_split
    return AttackContext(query_pids=ws.query.pids.clone(), query_feats=qf.clone(), seed=spec.seed,
                         gallery_feats=gf.clone(), gallery_pids=ws.gallery.pids.clone(),
                         train_images=ws.train.images.clone() if learns else None,
                         train_pids=ws.train.pids.clone() if learns else None,
                         surrogate=make_surrogate_builder(spec, ws, device), target_backbone=spec.model.backbone,
                         query_camids=ws.query.camids.clone(), gallery_camids=ws.gallery.camids.clone(),
                         metric=spec.metric)


class PassCounter:
    """The attacked model as an attack sees it, counting the images it embeds and differentiates.

    `embed` is a forward pass; `attack_embed` with an input that requires a gradient is a forward
    and, as white-box attacks use it, a backward pass. Every other attribute is the model's.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        self.forward = 0
        self.backward = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The model's embedding, counted as one forward pass per image."""
        self.forward += len(x)
        return self._model.embed(x)

    def attack_embed(self, x: torch.Tensor) -> torch.Tensor:
        """The model's adaptive forward, counted as a forward (and a backward when `x` requires a gradient)."""
        self.forward += len(x)
        self.backward += len(x) if x.requires_grad and torch.is_grad_enabled() else 0
        return self._model.attack_embed(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def per_query(self, queries: int) -> dict[str, float]:
        """Forward and backward passes per attacked query."""
        return {"forward": self.forward / max(1, queries), "backward": self.backward / max(1, queries)}


def run_attack(name: str, eps: float, model: torch.nn.Module, ws: Workspace, ctx: AttackContext, spec: RunSpec,
               clean: torch.Tensor, options: dict[str, Any] | None = None, indices: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, dict[str, Any], float]:
    """Run one attack over the query set (or the queries `indices`) and enforce the threat model and model integrity."""
    counter = PassCounter(model)
    attack = build_attack(name, counter, **(options if options is not None else attack_options(spec, name, eps)))
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
    ctx.report["passes_per_query"] = counter.per_query(len(images) if indices is None else len(indices))
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

    def __init__(self, spec: RunSpec, checkpoint_key: str, defense: Defense, defense_config: dict[str, Any],
                 ws: Workspace, device: torch.device) -> None:
        self.root = cache_dir() / "cells"
        self.base = {"checkpoint": checkpoint_key, "numerics": numerics(device), "defense": spec.defense.identity(),
                     "defense_config": defense_config, "seed": spec.seed, "norm": spec.norm,
                     "data": ws.digests, "defense_code": source_digest(type(defense))}

    def key(self, name: str, eps: float, options: dict[str, Any], forward: str = "", **extra: Any) -> str:
        """The cache key of one attack cell (`extra`: a suite member's suite, position and attacked queries)."""
        cls = ATTACKS.get(name)
        return fingerprint({**self.base, "attack": name, "options": options, "eps": round(eps * 255, 6),
                            "attack_code": source_digest(cls), "forward": forward, **extra})

    def load(self, key: str) -> tuple[torch.Tensor, dict[str, Any], float] | None:
        """A verified cached cell, or None (a damaged one is removed); under torchrun, rank 0's answer for all."""
        return from_main(lambda: self._load(key))

    def load_checked(self, key: str, clean: torch.Tensor, eps: float, attack: str, norm: str
                     ) -> tuple[torch.Tensor, dict[str, Any], float] | None:
        """`load`, then the threat-model check every fresh output passes: a stored cell that fails it was altered
        after it was written (it passed the same check before), so it is removed and run again, with a note."""
        cached = self.load(key)
        if cached is None:
            return None
        try:
            check_adversarial(cached[0], clean, eps, attack, norm)
        except AttackValidityError as exc:
            log.warning("cached attack cell %s is corrupt (%s); running it again", key, exc)
            if world().is_main:
                remove_folder(self.root / key)
            return None
        return cached

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
                save_tensors({"adv": adv.contiguous()}, tmp / "adv.safetensors")
                record = {"sha256": sha256_file(tmp / "adv.safetensors"), "report": report, "seconds": seconds,
                          "digest": tensor_digest([adv])[:16]}
                atomic_write_text(tmp / "cell.json", json.dumps(record, default=str))


