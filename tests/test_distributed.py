"""torch.distributed on the CPU (gloo): data-parallel training and sharded evaluation under torchrun.

What is checked against one process: one data-parallel step equals the full-batch step (a loss that
decomposes over samples, no BatchNorm); every rank ends training with the same model; a sharded
evaluation writes the same per-query numbers, bit for bit. Whole-run training is not compared with
one process: batch-hard triplets and BatchNorm see each rank's half batch, so the model differs by
design, and its checkpoint key says so (`world_size`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessExitedException

from benchmark.core import distributed
from benchmark.core.errors import BenchmarkError
from tests.conftest import TINY_SYNTHPED, tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n,batch,size", [(0, 4, 2), (5, 4, 2), (8, 4, 2), (9, 4, 2), (130, 128, 2), (257, 128, 3),
                                          (3, 1, 4), (1000, 7, 5)])
def test_shards_are_whole_batches_that_tile_the_queries(n, batch, size):
    bounds = [distributed.shard_bounds(n, batch, size, r) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (a, b), (c, _) in zip(bounds, bounds[1:], strict=False):
        assert b == c and a <= b
    for a, b in bounds:
        assert a % batch == 0 or a == n
        assert b % batch == 0 or b == n
    sizes = [-(-(b - a) // batch) for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1  # batches dealt evenly


def test_without_torchrun_everything_is_one_process():
    assert distributed.world() == distributed.World(0, 1)
    batch = torch.arange(12)
    assert torch.equal(distributed.identity_shard(batch, 4), batch)
    assert distributed.from_main(lambda: 7) == 7
    assert distributed.gather_objects("x") == ["x"]
    assert distributed.sharded_attack(lambda idx: idx * 2, torch.arange(5), 2).tolist() == [0, 2, 4, 6, 8]


# -- two gloo processes --------------------------------------------------------------------------
def _join(rank: int, size: int, rendezvous: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=size)


def _one_step(rank: int, size: int, rendezvous: str, out: str) -> None:
    _join(rank, size, rendezvous)
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    x, y = torch.randn(16, 6), torch.randint(3, (16,))
    batch = distributed.identity_shard(torch.arange(16), 4)  # 4 "identities" of 4 samples
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with distributed.data_parallel(model):
        torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
    torch.save({"rank_batch": batch, "state": model.state_dict()}, f"{out}.{rank}")
    distributed.shutdown()


def _train_tiny(rank: int, size: int, rendezvous: str, out: str) -> None:
    from benchmark.core.hashing import module_state_digest
    from benchmark.core.training import TrainConfig, standard_step, train_model
    from benchmark.data import SplitTensors
    from benchmark.models import ModelConfig, ReidModel

    _join(rank, size, rendezvous)
    g = torch.Generator().manual_seed(1)
    train = SplitTensors(torch.randint(0, 256, (64, 3, 32, 16), dtype=torch.uint8, generator=g),
                         torch.arange(8).repeat_interleave(8), torch.zeros(64, dtype=torch.long))
    torch.manual_seed(0)
    model = ReidModel(ModelConfig("reidnet-s", 8, 32, 16))
    history = train_model(model, train, TrainConfig(epochs=2, p=4, k=4, seed=0), standard_step,
                          torch.device("cpu"), desc="tiny")
    Path(f"{out}.{rank}").write_text(json.dumps({"digest": module_state_digest(model), "history": history}))
    distributed.shutdown()


def _spawn(fn, tmp_path: Path, size: int = 2) -> str:
    out = str(tmp_path / "out")
    try:
        mp.spawn(fn, args=(size, str(tmp_path / "rendezvous"), out), nprocs=size, join=True)
    except ProcessExitedException:
        # gloo's worker threads can abort a process at interpreter exit after its work is done
        # (pytorch/pytorch#179291; seen once here, "terminate called without an active exception");
        # a rank that died before writing its result still fails, and the results are checked below
        if not all(Path(f"{out}.{rank}").exists() for rank in range(size)):
            raise
    return out


def test_a_data_parallel_step_equals_the_full_batch_step(tmp_path):
    out = _spawn(_one_step, tmp_path)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    # identities are dealt round-robin: rank 0 holds identities 0 and 2, rank 1 identities 1 and 3
    assert ranks[0]["rank_batch"].tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert ranks[1]["rank_batch"].tolist() == [4, 5, 6, 7, 12, 13, 14, 15]
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    x, y = torch.randn(16, 6), torch.randint(3, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    for r in ranks:
        for name, value in model.state_dict().items():
            torch.testing.assert_close(r["state"][name], value, rtol=0, atol=1e-6)


def test_every_rank_ends_training_with_the_same_model(tmp_path):
    out = _spawn(_train_tiny, tmp_path)
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["history"]["world_size"] == 2
    # logged losses are means over the ranks, so every rank records the same history
    assert ranks[0]["history"]["epochs"] == ranks[1]["history"]["epochs"]


def test_a_batch_too_small_to_split_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(0, 4))
    with pytest.raises(BenchmarkError, match="fewer processes or a larger P"):
        distributed.identity_shard(torch.arange(24), 4)  # 6 identities for 4 ranks


def test_a_checkpoint_is_trained_only_in_the_world_its_key_names():
    from benchmark.run.checkpoints import check_training_world

    with pytest.raises(BenchmarkError, match="torchrun --nproc-per-node 2 -m benchmark train"):
        check_training_world(tiny_config(train_processes=2), {"defense": "none"})
    check_training_world(tiny_config(), {"defense": "none"})


def test_only_cell_commands_run_under_torchrun(monkeypatch):
    from benchmark.cli.main import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["table"]) == 2


def test_train_processes_and_amp_make_a_run_custom():
    assert tiny_config().settings == tiny_config(dataset_options=dict(TINY_SYNTHPED)).settings
    spec = tiny_config(train_processes=2, amp="bf16")
    assert spec.custom_settings()["train-processes"] == "2" and spec.custom_settings()["amp"] == "bf16"
    assert spec.digest != tiny_config().digest
    with pytest.raises(BenchmarkError, match="--amp"):
        tiny_config(amp="fp16")


# -- torchrun end to end ---------------------------------------------------------------------------
def _cli(*args: str, cache: Path, procs: int = 1) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
                if procs > 1 else [sys.executable])
    env = {**os.environ, "PYTHONPATH": str(REPO), "RRB_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, "-m", "benchmark", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_torchrun_sharded_evaluation_equals_one_process_and_training_writes_one_checkpoint(tmp_path):
    # ~170 queries: two batches of the attacks' 128, so each rank attacks one
    data = ",".join(f"{k}={v}" for k, v in {**TINY_SYNTHPED, "num_ids": "200"}.items())
    common = ["--defense", "none", "--epochs", "1", "--dataset-opt", data, "--height", "64", "--width", "32",
              "--device", "cpu", "--allow-dirty"]
    run = ["run", *common, "--attack", "fna,apgd-ce", "--attack-opt", "apgd-ce:steps=4", "--attack-opt",
           "fna:steps=4"]
    cache = tmp_path / "cache"
    _cli(*run, "--threads", "1", "--results-dir", str(tmp_path / "r1"), "--leaderboard-dir", str(tmp_path / "b1"),
         cache=cache)
    sharded = _cli(*run, "--train-processes", "1", "--results-dir", str(tmp_path / "r2"), "--leaderboard-dir",
                   str(tmp_path / "b2"), cache=cache, procs=2)
    one, two = (next((tmp_path / r).glob("*/per_query.csv")) for r in ("r1", "r2"))
    assert len(one.read_text().splitlines()) > 129
    assert one.read_bytes() == two.read_bytes()
    assert sharded.stdout.count("run folder:") == 1  # rank 0 alone reports and writes

    trained = _cli("train", *common, cache=cache, procs=2)
    info = json.loads(trained.stdout)
    record = json.loads((Path(info["checkpoint"]) / "train.json").read_text())
    assert record["key"]["world_size"] == 2 and record["history"]["world_size"] == 2
    assert len(list((cache / "checkpoints").glob("*/train.json"))) == 2  # the 1-process one and this one


# -- mixed precision ---------------------------------------------------------------------------------
def test_amp_trains_and_extracts_in_bf16_but_attacks_in_float32(tiny_ws):
    from benchmark.core.precision import mixed_precision
    from benchmark.run.cells import attack_context, run_attack
    from benchmark.run.checkpoints import embed
    from benchmark.run.execute import execute
    from tests.conftest import cpu_runtime

    spec = tiny_config(amp="bf16", epochs=1, attacks="ifgsm", attack_options={"ifgsm": {"steps": "2"}})
    outcome = execute(spec, cpu_runtime(), workspace=tiny_ws)
    assert outcome.train_info.key["amp"] == "bf16"
    assert outcome.query_feats.dtype == torch.float32
    model = outcome.model
    seen: list[torch.dtype] = []
    hook = model.model.backbone.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        with mixed_precision("bf16", torch.device("cpu")):
            model(tiny_ws.query.float_images()[:2])
        assert seen == [torch.bfloat16]  # extraction under --amp bf16 is bf16 ...
        seen.clear()
        ctx = attack_context(spec, tiny_ws, outcome.query_feats, outcome.gallery_feats, torch.device("cpu"),
                             "ifgsm")
        with torch.autocast("cpu", dtype=torch.bfloat16):  # ... and an attack stays float32 even inside autocast
            run_attack("ifgsm", 8 / 255, outcome.views[0], tiny_ws, ctx, spec, tiny_ws.query.float_images(),
                       {"eps": 8 / 255, "steps": 2}, torch.arange(4))
        assert seen and set(seen) == {torch.float32}
        assert embed(model, tiny_ws.query.images[:4], spec, torch.device("cpu")).dtype == torch.float32
    finally:
        hook.remove()
