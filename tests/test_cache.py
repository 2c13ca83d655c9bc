"""A cache that proves what it holds: hashes verified on load, atomic and concurrent-safe writes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import stat
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision

from benchmark.core.atomic import atomic_folder, atomic_write_text
from benchmark.core.errors import BenchmarkError
from benchmark.core.training import cached_checkpoint
from benchmark.models import ModelConfig, ReidModel
from tests.conftest import TINY_SYNTHPED


def _tiny_model(seed: int = 0) -> ReidModel:
    torch.manual_seed(seed)
    return ReidModel(ModelConfig("reidnet-s", 4, 64, 32))


def _train(calls: list):
    def fit():
        calls.append(1)
        return _tiny_model(), {"train_seconds": 0.0}

    return fit


def test_damaged_checkpoints_are_trained_again_never_loaded(caplog):
    key = {"test": "damaged"}
    calls: list = []
    model, info, folder = cached_checkpoint(key, _train(calls))
    assert not info["cached"] and len(calls) == 1
    _, info, _ = cached_checkpoint(key, _train(calls))
    assert info["cached"] and len(calls) == 1
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10  # one flipped bit in a weight
    weights.write_bytes(bytes(data))
    _, info, _ = cached_checkpoint(key, _train(calls))
    assert not info["cached"] and len(calls) == 2 and "damaged" in caplog.text
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    _, info, _ = cached_checkpoint(key, _train(calls))
    assert not info["cached"] and len(calls) == 3
    (folder / "model.json").unlink()
    _, info, _ = cached_checkpoint(key, _train(calls))
    assert not info["cached"] and len(calls) == 4
    assert not list(folder.parent.glob(".tmp-*"))


@pytest.mark.parametrize("record", [None, "", "abc", 7])
def test_a_checkpoint_whose_record_lacks_its_sha256_is_trained_again(caplog, record):
    key = {"test": f"no-sha-{record}"}
    calls: list = []
    _, _, folder = cached_checkpoint(key, _train(calls))
    info = json.loads((folder / "train.json").read_text())
    if record is None:
        del info["weights_sha256"]
    else:
        info["weights_sha256"] = record
    (folder / "train.json").write_text(json.dumps(info))
    _, info, _ = cached_checkpoint(key, _train(calls))
    assert not info["cached"] and len(calls) == 2 and "no sha256" in caplog.text


def test_non_finite_models_are_never_cached():
    def fit():
        model = _tiny_model()
        with torch.no_grad():
            model.bnneck.weight.fill_(float("nan"))
        return model, {}

    with pytest.raises(BenchmarkError, match="training diverged"):
        cached_checkpoint({"test": "nan"}, fit)
    calls: list = []
    _, info, _ = cached_checkpoint({"test": "nan"}, _train(calls))
    assert not info["cached"] and calls == [1]


def _finish_same_checkpoint(args):
    cache, marker = args
    os.environ["RRB_CACHE_DIR"] = cache

    def fit():
        Path(marker).parent.mkdir(exist_ok=True)
        with open(marker, "a") as fh:
            fh.write("trained\n")
        time.sleep(0.5)
        return _tiny_model(), {}

    _, info, folder = cached_checkpoint({"test": "race"}, fit)
    return str(folder), info["cached"]


def test_concurrent_finishers_of_one_checkpoint_both_succeed(tmp_path):
    cache = tmp_path / "cache"
    marker = tmp_path / "m" / "trained.txt"
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(_finish_same_checkpoint, [(str(cache), str(marker))] * 2)
    assert results[0][0] == results[1][0]
    assert sorted(c for _, c in results) == [False, True]  # one trained, the other waited and loaded
    assert marker.read_text().count("trained") == 1
    assert not list((cache / "checkpoints").glob(".tmp-*"))


def test_interrupted_writes_leave_nothing_behind(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_folder(tmp_path / "entry") as tmp:
        (tmp / "half.bin").write_bytes(b"x" * 1000)
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    # a writer killed outright (SIGKILL) leaves a temporary that the next writer sweeps
    (tmp_path / ".tmp-999999-entry").mkdir()
    with atomic_folder(tmp_path / "entry") as tmp:
        (tmp / "done").write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]


def test_ctrl_c_during_data_generation_leaves_no_temp(tmp_path, monkeypatch):
    from benchmark.data import synthped

    def interrupted(root, cfg, seed):
        (root / "bounding_box_train").mkdir(parents=True)
        (root / "bounding_box_train" / "x.png").write_bytes(b"x" * 10_000)
        raise KeyboardInterrupt

    monkeypatch.setattr(synthped, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthped.ensure_synthped(0, synthped.SynthPedConfig(num_ids=8), tmp_path)
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")]


def test_deleted_synthped_image_renders_again(tmp_path):
    from benchmark.data.synthped import SynthPedConfig, ensure_synthped

    cfg = SynthPedConfig(**{k: int(v) for k, v in TINY_SYNTHPED.items()})
    folder = ensure_synthped(1, cfg, tmp_path)
    files = sorted(folder.rglob("*.png"))
    files[3].unlink()
    again = ensure_synthped(1, cfg, tmp_path)
    assert again == folder and sorted(folder.rglob("*.png")) == files
    files[5].write_bytes(b"not the image")
    ensure_synthped(1, cfg, tmp_path)
    assert files[5].read_bytes()[:4] == b"\x89PNG"


def test_written_files_keep_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.csv", "x\n")
        with atomic_folder(tmp_path / "run") as tmp:
            atomic_write_text(tmp / "b.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "run" / "b.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755


def test_text_columns_stay_text_across_rewrites(tmp_path):
    from benchmark.report.boards import read_board
    from tests.test_leaderboard import make_row, write_leaderboards

    row = make_row()
    row.git_commit = "012345678901"
    write_leaderboards([row], tmp_path)
    write_leaderboards([make_row(attack="sma")], tmp_path)  # a second writer rewrites the file
    board = read_board(tmp_path / "toy.csv")
    assert "012345678901" in set(board["git_commit"])
    assert pd.read_csv(tmp_path / "toy.csv", dtype=str)["git_commit"].str.len().max() == 12


@pytest.mark.parametrize("name, builder", [("resnet18", torchvision.models.resnet18),
                                           ("resnet50", torchvision.models.resnet50),
                                           ("mobilenetv2", torchvision.models.mobilenet_v2)])
def test_standard_torchvision_state_dicts_load(name, builder, tmp_path, caplog):
    from benchmark.models import build_backbone

    torch.manual_seed(0)
    reference = builder(weights=None)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    caplog.set_level("INFO")
    module, _ = build_backbone(name, path)
    head = "fc" if name.startswith("resnet") else "classifier"
    assert f"classifier head dropped ({head}." in caplog.text
    first_conv = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
    ref_conv = next(m for m in reference.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.equal(first_conv.weight, ref_conv.weight)


def test_weight_files_are_keyed_by_content(tmp_path):
    from benchmark.run.spec import make_spec

    path = tmp_path / "w.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    first = make_spec(backbone="resnet18", backbone_weights=str(path))
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)  # same path, new content
    second = make_spec(backbone="resnet18", backbone_weights=str(path))
    assert first.model.weights_sha256 != second.model.weights_sha256 and first.digest != second.digest
    assert not first.official and "weights" in first.custom_settings()


def test_ddid_generator_folder_is_keyed_by_content(tmp_path):
    from defenses import build_defense
    from tests.test_ddid_parts import tiny_generator

    gen = tiny_generator(tmp_path / "gen")
    first = build_defense("ddid", generator=str(gen)).config()["generator_sha256"]
    meta = json.loads((gen / "conditioning.json").read_text())
    (gen / "conditioning.json").write_text(json.dumps({**meta, "note": "edited"}))
    assert build_defense("ddid", generator=str(gen)).config()["generator_sha256"] != first


def test_cached_files_are_shared_like_every_other_file(tmp_path):
    """safetensors writes 0600; checkpoints and attack cells get the permissions of the rest of the cache."""
    import os

    from benchmark.core.atomic import default_mode, save_tensors

    save_tensors({"x": torch.zeros(2)}, tmp_path / "x.safetensors")
    assert os.stat(tmp_path / "x.safetensors").st_mode & 0o777 == default_mode()
    model = ReidModel(ModelConfig("reidnet-s", 4, 64, 32))
    model.save(tmp_path / "ckpt")
    for name in ("model.safetensors", "model.json"):
        assert os.stat(tmp_path / "ckpt" / name).st_mode & 0o777 == default_mode(), name


def test_an_altered_attack_cell_is_run_again_not_blamed_on_the_attack(tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file, save_file

    from benchmark.cli.main import main
    from benchmark.core.hashing import sha256_file

    monkeypatch.setenv("RRB_CACHE_DIR", str(tmp_path))
    argv = ["eval", "--defense", "none", "--attack", "fgsm", "--epochs", "1", "--device", "cpu", "--height", "64",
            "--width", "32", "--dataset-opt", ",".join(f"{k}={v}" for k, v in TINY_SYNTHPED.items())]
    assert main(argv) == 0
    first = capsys.readouterr().out
    (cell,) = [p for p in (tmp_path / "cells").iterdir() if p.is_dir()]
    adv = load_file(str(cell / "adv.safetensors"))["adv"]
    save_file({"adv": (adv + 0.5).clamp(0, 1)}, str(cell / "adv.safetensors"))  # far outside the ball
    record = json.loads((cell / "cell.json").read_text())
    record["sha256"] = sha256_file(cell / "adv.safetensors")  # altered consistently: only the ball check sees it
    (cell / "cell.json").write_text(json.dumps(record))
    assert main(argv) == 0
    second = capsys.readouterr()
    assert "is corrupt" in second.err and "running it again" in second.err
    assert second.out.split("fgsm")[1][:40] == first.split("fgsm")[1][:40]


def test_a_safetensors_write_failure_is_an_os_error_naming_the_file(tmp_path):
    from benchmark.core.atomic import save_tensors

    target = tmp_path / "missing" / "x.safetensors"
    with pytest.raises(OSError) as exc:
        save_tensors({"a": torch.zeros(2)}, target)
    assert exc.value.filename == str(target)
