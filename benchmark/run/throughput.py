"""Throughput: images/s of feature extraction, of each attack iteration, and of each defense's training step.

Warm-up before timing, CUDA synchronisation around every timed call, and batch back-off (halving)
on CUDA out-of-memory. Writes `leaderboards/throughput-<device>-<torch>.csv` (timm `results/` style).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from attacks import ATTACKS, AttackContext, build_attack
from benchmark.core.device import synchronize
from benchmark.core.precision import mixed_precision
from benchmark.core.protocol import STANDARD_INPUT as INPUT
from benchmark.core.training import TrainConfig, TrainContext
from benchmark.models import ModelConfig, ReidModel
from defenses import DefendedModel, build_defense

THROUGHPUT_KEY = ("kind", "name", "backbone", "input", "amp", "device")
ITERATIONS = 4  # attack iterations timed per measurement


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `fn` after one warm-up call."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def with_backoff(measure: Callable[[int], float], batch: int) -> tuple[float, int]:
    """Run `measure(batch)`, halving the batch on CUDA out-of-memory."""
    while True:
        try:
            return measure(batch), batch
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            torch.cuda.empty_cache()
            batch //= 2


def _model(backbone: str, device: torch.device, classes: int = 16, size: tuple[int, int] = INPUT) -> ReidModel:
    torch.manual_seed(0)
    return ReidModel(ModelConfig(backbone, classes, *size)).to(device)


def extraction_rate(backbone: str, batch: int, device: torch.device, repeats: int, size: tuple[int, int] = INPUT,
                    amp: str = "off") -> tuple[float, int]:
    """Images/s of feature extraction (and the batch after back-off), under the run's precision."""
    model = _model(backbone, device, size=size).eval()

    def measure(b: int) -> float:
        x = torch.rand(b, 3, *size, device=device)
        with torch.no_grad(), mixed_precision(amp, device, model):
            return b / timed(lambda: model.embed(x), device, repeats)

    return with_backoff(measure, batch)


def attack_rate(name: str, backbone: str, batch: int, device: torch.device, repeats: int,
                size: tuple[int, int] = INPUT) -> tuple[float, int]:
    """Images x iterations per second (one query-bb 'iteration' is one query of the batch); always float32."""
    model = DefendedModel(_model(backbone, device, size=size)).eval()
    cls = ATTACKS.get(name)

    def measure(b: int) -> float:
        x = torch.rand(b, 3, *size)
        pids = torch.arange(b) % max(2, b // 4)
        with torch.no_grad():
            feats = model.embed(x.to(device)).cpu()
        surrogate = _model("reidnet-t", device, size=size).eval()
        ctx = AttackContext(query_pids=pids, query_feats=feats, train_images=(x * 255).to(torch.uint8),
                            train_pids=pids + 10_000, surrogate=lambda _: surrogate, target_backbone=backbone)
        attack = build_attack(name, model, **(cls.throughput_options(ITERATIONS, b) or {}))
        return b * cls.throughput_iterations(ITERATIONS) / timed(lambda: attack.run(x, ctx), device, repeats)

    return with_backoff(measure, batch)


def training_rate(defense_name: str, backbone: str, batch: int, device: torch.device,
                  repeats: int, size: tuple[int, int] = INPUT, amp: str = "off") -> tuple[float, int]:
    """Images/s of one training step of a defense, under the run's precision."""
    defense = build_defense(defense_name).throughput_variant()
    model = _model(backbone, device, size=size).train()

    def measure(b: int) -> float:
        k = 4
        x = torch.rand(b, 3, *size, device=device)
        y = (torch.arange(b) // k).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        extra = defense.training_extras(model, 1e-4, device)
        ctx = TrainContext(opt, 16, device, torch.Generator().manual_seed(0), TrainConfig(), extra=extra)
        with mixed_precision(amp, device, model):
            return b / timed(lambda: defense.train_step(model, x, y, ctx), device, repeats)

    return with_backoff(measure, batch)
