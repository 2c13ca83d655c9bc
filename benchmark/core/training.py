"""The training loop every defense shares: PK batches, augmentation, tqdm, checkpoint cache."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from tqdm import tqdm

from benchmark.core import distributed
from benchmark.core.atomic import atomic_folder, atomic_write_text, remove_folder
from benchmark.core.errors import BenchmarkError, CorruptCacheError
from benchmark.core.hashing import fingerprint, module_state_digest, tensor_digest
from benchmark.core.losses import batch_hard_triplet
from benchmark.core.paths import cache_dir
from benchmark.core.sampling import augment, pk_batches
from benchmark.data import SplitTensors
from benchmark.models import ReidModel

CODE_VERSION = 2  # bump when training semantics change so cached checkpoints are not reused


@dataclass(frozen=True)
class TrainConfig:
    """Schedule and loss settings shared by every defense's training."""
    epochs: int = 30
    p: int = 16
    k: int = 4
    lr: float = 1e-3
    weight_decay: float = 5e-4
    warmup_epochs: int = 2
    label_smoothing: float = 0.1
    margin: float = 0.3
    seed: int = 0


@dataclass
class TrainContext:
    """What a training step may use besides the batch."""

    optimizer: torch.optim.Optimizer
    num_classes: int
    device: torch.device
    generator: torch.Generator
    cfg: TrainConfig
    epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def id_loss_and_triplet(model: ReidModel, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
    """ID cross-entropy with label smoothing + batch-hard triplet: the standard ReID objective."""
    out = model(x)
    ce = torch.nn.functional.cross_entropy(out.logits, y, label_smoothing=ctx.cfg.label_smoothing)
    return ce + batch_hard_triplet(out.features, y, ctx.cfg.margin)


StepFn = Callable[[ReidModel, torch.Tensor, torch.Tensor, TrainContext], dict[str, float]]


def relabel(pids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary pids to 0..C-1 class labels."""
    uniq, labels = torch.unique(pids, return_inverse=True)
    return labels, len(uniq)


def _lr_factor(epoch: float, cfg: TrainConfig) -> float:
    if epoch < cfg.warmup_epochs:
        return 0.1 + 0.9 * epoch / max(cfg.warmup_epochs, 1e-9)
    progress = (epoch - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_model(model: ReidModel, train: SplitTensors, cfg: TrainConfig, step: StepFn,
                device: torch.device, desc: str = "train",
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train in place; returns a history with per-epoch mean losses and seconds per epoch.

    Under torchrun every rank takes whole identities of the same PK batches and gradients are
    averaged at each optimiser step (`benchmark.core.distributed`); in one process nothing changes.
    """
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    world = distributed.world()
    # one process keeps its single historical stream; ranks share the batch order and draw the rest apart
    sampler = generator if world.size == 1 else torch.Generator().manual_seed(cfg.seed)
    if world.size > 1:
        generator = distributed.rank_generator(cfg.seed)
    labels, num_classes = relabel(train.pids)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ctx = TrainContext(optimizer, num_classes, device, generator, cfg, extra=dict(extra or {}))
    history: dict[str, Any] = {"epochs": [], "seconds_per_epoch": []}
    if world.size > 1:
        history["world_size"] = world.size
    modules = [model, *(m for m in ctx.extra.values() if isinstance(m, torch.nn.Module))]
    with distributed.data_parallel(*modules):
        for epoch in range(cfg.epochs):
            ctx.epoch = epoch
            start = time.perf_counter()
            sums: dict[str, float] = {}
            batches = list(pk_batches(labels, cfg.p, cfg.k, sampler))
            bar = tqdm(batches, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True,
                       disable=None if world.is_main else True)
            for i, idx in enumerate(bar):
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * _lr_factor(epoch + i / len(batches), cfg)
                idx = distributed.identity_shard(idx, cfg.k)
                x = augment(train.float_images(idx).to(device), generator)
                logs = step(model, x, labels[idx].to(device), ctx)
                distributed.broadcast_state(*modules, buffers_only=True)
                for key, val in logs.items():
                    sums[key] = sums.get(key, 0.0) + val
                bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()}, refresh=False)
            history["epochs"].append(distributed.mean_over_ranks({k: v / len(batches) for k, v in sums.items()}))
            history["seconds_per_epoch"].append(time.perf_counter() - start)
            logging.getLogger("benchmark").info("%s epoch %d/%d: %s (%.1f s)", desc, epoch + 1, cfg.epochs,
                                                " ".join(f"{k}={v:.3f}" for k, v in history["epochs"][-1].items()),
                                                history["seconds_per_epoch"][-1])
    if world.size > 1:
        # the invariant data parallelism rests on: every rank ends with the same model
        digests = distributed.gather_objects(module_state_digest(model))
        if len(set(digests)) > 1:
            raise BenchmarkError(f"data-parallel ranks ended training with {len(set(digests))} different models; "
                                 "a defense's step draws randomness or updates weights outside its optimiser")
    model.eval()
    return history


def optimize(loss: torch.Tensor, ctx: TrainContext) -> dict[str, float]:
    """One optimiser step on `loss`; returns it for logging."""
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ctx.optimizer.step()
    return {"loss": loss.item()}


def standard_step(model: ReidModel, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> dict[str, float]:
    """One step of the undefended recipe."""
    return optimize(id_loss_and_triplet(model, x, y, ctx), ctx)


def split_fingerprint(train: SplitTensors) -> str:
    """Content hash of a split (every image, pid and camera), so a checkpoint is reused only on the same data."""
    return tensor_digest([train.images, train.pids, train.camids])[:16]


def cached_checkpoint(key_payload: dict[str, Any], train_fn: Callable[[], tuple[ReidModel, dict[str, Any]]],
                      retrain: bool = False) -> tuple[ReidModel, dict[str, Any], Path]:
    """Load the checkpoint for this key, or train, verify, save atomically and return it.

    One process trains a given key at a time (a file lock); a second one waits and loads the
    result. A checkpoint whose files are missing or do not match the sha256 written with them is
    trained again, never loaded; a model with non-finite weights is never cached.
    """
    key = fingerprint({"code": CODE_VERSION, **key_payload})
    root = cache_dir() / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / key
    if distributed.world().size > 1:
        return _cached_checkpoint_ranks(key_payload, folder, train_fn, retrain)
    log = logging.getLogger("benchmark")
    lock = FileLock(str(root / f"{key}.lock"))
    try:
        lock.acquire(timeout=1)
    except Timeout:
        log.info("another process is training checkpoint %s; waiting for it", key)
        lock.acquire()
    try:
        loaded = None if retrain else _load_checkpoint(folder)
        if loaded is not None:
            return loaded[0], loaded[1], folder
        model, info = train_fn()
        return model, _save_checkpoint(model, info, key_payload, folder), folder
    finally:
        lock.release()


def _load_checkpoint(folder: Path) -> tuple[ReidModel, dict[str, Any]] | None:
    """A verified cached checkpoint, or None when it is missing or damaged."""
    if not folder.exists():
        return None
    try:
        info = json.loads((folder / "train.json").read_text())
        sha = info.get("weights_sha256") if isinstance(info, dict) else None
        if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            raise CorruptCacheError("its record holds no sha256 of the weights, so they cannot be verified")
        model = ReidModel.load(folder, expected_sha256=sha)
    except (CorruptCacheError, OSError, ValueError) as exc:
        logging.getLogger("benchmark").warning("checkpoint %s is damaged (%s); training it again", folder.name, exc)
        return None
    return model, {**info, "cached": True}


def _save_checkpoint(model: ReidModel, info: dict[str, Any], key_payload: dict[str, Any], folder: Path
                     ) -> dict[str, Any]:
    """Refuse non-finite weights, then write the checkpoint folder atomically; returns the record."""
    bad = model.non_finite()
    if bad:
        raise BenchmarkError(f"training diverged: {len(bad)} tensors hold NaN or infinity (e.g. {bad[0]}); "
                             "nothing was cached. Lower the learning rate or check the defense's loss")
    if folder.exists():
        remove_folder(folder)
    with atomic_folder(folder) as tmp:
        sha = model.save(tmp)
        record = {"key": key_payload, "weights_sha256": sha, **info}
        atomic_write_text(tmp / "train.json", json.dumps(record, indent=2, default=str))
    return {**record, "cached": False}


def _cached_checkpoint_ranks(key_payload: dict[str, Any], folder: Path,
                             train_fn: Callable[[], tuple[ReidModel, dict[str, Any]]], retrain: bool
                             ) -> tuple[ReidModel, dict[str, Any], Path]:
    """`cached_checkpoint` under torchrun: rank 0 decides hit or miss for all, every rank trains, rank 0 writes.

    Rank 0 alone holds the file lock (other ranks would wait on it while rank 0 waits on them).
    """
    lock = FileLock(str(folder.parent / f"{folder.name}.lock")) if distributed.world().is_main else None
    if lock is not None:
        lock.acquire()
    try:
        # rank 0 reads the checkpoint once and decides for all; the others read it only on a hit
        loaded = _load_checkpoint(folder) if lock is not None and not retrain else None
        hit = distributed.from_main(lambda: loaded is not None)
        if hit and loaded is None:
            loaded = _load_checkpoint(folder)
        if loaded is not None:
            return loaded[0], loaded[1], folder
        if hit:
            raise CorruptCacheError(f"checkpoint {folder} vanished while ranks loaded it; run again")
        model, info = train_fn()
        record = distributed.from_main(lambda: _save_checkpoint(model, info, key_payload, folder))
        return model, record, folder
    finally:
        if lock is not None:
            lock.release()
