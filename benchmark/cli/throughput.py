"""`throughput`: measure images/s of extraction, attacks and training steps, and write the throughput board."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from attacks import ATTACKS
from benchmark.core.device import resolve_device
from benchmark.core.paths import boards_dir
from benchmark.core.provenance import provenance
from benchmark.models import BACKBONES
from benchmark.report.boards import ThroughputRow, upsert
from benchmark.run.execute import apply_runtime
from benchmark.run.outcome import Runtime
from benchmark.run.throughput import ITERATIONS, THROUGHPUT_KEY, attack_rate, extraction_rate, training_rate
from defenses import DEFENSES


def cmd_throughput(args: argparse.Namespace) -> int:
    """Measure and write the throughput board."""
    device = resolve_device(args.device)
    apply_runtime(Runtime())  # the same kernels and heap settings as a run
    prov = provenance(device, 0)
    rows = []
    jobs: list[tuple[str, str, Callable[[], tuple[float, int]]]] = []
    size, amp = (args.height, args.width), args.amp
    for b in BACKBONES.names():
        jobs.append(("extract", b, lambda b=b: extraction_rate(b, args.batch_size, device, args.repeats, size, amp)))
    for a in ATTACKS.resolve(args.attack) if args.attack != "none" else []:
        if ATTACKS.get(a).throughput_options(ITERATIONS, args.batch_size) is None:
            continue
        jobs.append(("attack", a, lambda a=a: attack_rate(a, args.backbone, args.batch_size, device, args.repeats,
                                                          size)))
    for d in DEFENSES.resolve(args.defense) if args.defense != "none" else []:
        jobs.append(("train-step", d, lambda d=d: training_rate(d, args.backbone, args.batch_size, device,
                                                                args.repeats, size, amp)))
    for kind, name, job in jobs:
        rate, batch = job()
        backbone = name if kind == "extract" else args.backbone
        print(f"{kind:<10} {name:<12} {backbone:<11} batch {batch:>3}  {rate:10.1f} images/s")
        rows.append(dataclasses.asdict(ThroughputRow(
            kind=kind, name=name, backbone=backbone, batch_size=batch, images_per_second=rate,
            input=f"{size[0]}x{size[1]}", amp="off" if kind == "attack" else amp, device=prov["device"],
            torch_version=prov["torch_version"], git_commit=prov["git_commit"], date=prov["date"],
            command=prov["command"])))
    tag = "cuda" if device.type == "cuda" else "cpu"
    path = Path(args.leaderboard_dir or boards_dir()) / f"throughput-{tag}-torch{torch.__version__.split('+')[0]}.csv"
    upsert(path, rows, THROUGHPUT_KEY)
    print(f"throughput: {path}")
    return 0
