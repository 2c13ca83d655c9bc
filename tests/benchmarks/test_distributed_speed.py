"""Sharded evaluation under torchrun (gloo, CPU): attack seconds of 2 processes against 1 (1 and 2 threads).

Run with `pytest tests/benchmarks/test_distributed_speed.py --benchmark-only -s`. Both sides run in
this one test, so their ratio is measured under the same load; the per-query numbers are checked
equal on the way (the sharding must not change a result).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN = ["run", "--defense", "none", "--epochs", "2", "--dataset-opt", "num_ids=300", "--device", "cpu",
       "--attack", "fna,apgd-ce,query-bb", "--attack-opt", "apgd-ce:steps=20", "--attack-opt", "query-bb:queries=100",
       "--allow-dirty"]


def _run(tmp: Path, name: str, procs: int, threads: int, cache: Path) -> tuple[float, float, Path]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
                if procs > 1 else [sys.executable])
    extra = ["--train-processes", "1"] if procs > 1 else ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RRB_CACHE_DIR": str(cache), "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run([*launcher, "-m", "benchmark", *RUN, *extra, "--results-dir", str(tmp / name),
                    "--leaderboard-dir", str(tmp / f"{name}-boards")], cwd=REPO, env=env, check=True,
                   capture_output=True, text=True)
    wall = time.perf_counter() - start
    folder = next(p for p in (tmp / name).iterdir() if (p / "metrics.json").is_file())
    attacks = json.loads((folder / "metrics.json").read_text())["attacks"]
    return sum(a["seconds"] for a in attacks), wall, folder


def test_sharded_evaluation_two_processes(benchmark, tmp_path):
    cache = tmp_path / "cache"

    def measure() -> dict[str, float]:
        shutil.rmtree(cache / "cells", ignore_errors=True)  # attacks must run, not come from the cache
        one = _run(tmp_path, "one", 1, 1, cache)
        shutil.rmtree(cache / "cells", ignore_errors=True)
        two = _run(tmp_path, "two", 2, 1, cache)
        assert (one[2] / "per_query.csv").read_bytes() == (two[2] / "per_query.csv").read_bytes()
        # the same two cores as one process with two threads (another checkpoint: threads are in its key)
        threaded = _run(tmp_path, "threaded", 1, 2, cache)
        return {"attack_s_1proc_1thread": one[0], "attack_s_1proc_2threads": threaded[0],
                "attack_s_2proc_1thread": two[0], "speedup_over_1thread": one[0] / two[0],
                "speedup_over_2threads": threaded[0] / two[0], "wall_s_1proc": one[1], "wall_s_2proc": two[1]}

    _run(tmp_path, "warm", 1, 1, cache)  # trains the checkpoint both sides load
    result = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(json.dumps(result, indent=2))
