"""The validation split: held-out training identities scored with the test protocol, never a test identity."""

from __future__ import annotations

import pytest
import torch

from benchmark.core.errors import BenchmarkError
from benchmark.run.workspace import load_workspace
from tests.conftest import tiny_config


def test_validation_split_holds_out_training_identities_with_cross_camera_positives(tiny_ws):
    spec = tiny_config(split="validation")
    ws = load_workspace(spec)
    train_ids, query_ids = set(ws.train.pids.tolist()), set(ws.query.pids.tolist())
    assert train_ids.isdisjoint(query_ids) and train_ids.isdisjoint(set(ws.gallery.pids.tolist()))
    test_ids = set(tiny_ws.query.pids.tolist()) | set(tiny_ws.gallery.pids.tolist())
    assert test_ids.isdisjoint(query_ids | set(ws.gallery.pids.tolist()))  # never a test identity
    assert len(ws.train) + len(ws.query) + len(ws.gallery) == len(tiny_ws.train)
    all_ids = torch.unique(tiny_ws.train.pids)
    assert abs(len(set(ws.gallery.pids.tolist())) - 0.25 * len(all_ids)) <= 1
    for pid, cam in zip(ws.query.pids.tolist(), ws.query.camids.tolist(), strict=True):
        assert ((ws.gallery.pids == pid) & (ws.gallery.camids != cam)).any()
    # reports name the right files: the data set's items follow the tensors
    assert [it.pid for it in ws.dataset.query] == ws.query.pids.tolist()
    # the same people for every candidate of a search: a fixed seed, not whatever the process drew before
    torch.manual_seed(123)
    torch.rand(10)
    other = load_workspace(spec)
    assert torch.equal(other.query.pids, ws.query.pids) and torch.equal(other.train.pids, ws.train.pids)


def test_validation_runs_are_custom_and_keyed_apart():
    test, val = tiny_config(), tiny_config(split="validation")
    assert val.custom_settings()["split"] == "validation" and "split" not in test.custom_settings()
    assert test.digest != val.digest and "split" not in test.identity()


def test_bad_split_fails_in_one_line(capsys):
    from benchmark.cli.main import main

    with pytest.raises(SystemExit) as exit_info:  # argparse's choices: usage plus one error line
        main(["run", "--split", "val"])
    assert exit_info.value.code == 2 and "--split" in capsys.readouterr().err.splitlines()[-1]
    with pytest.raises(BenchmarkError, match="--split 'val'"):
        tiny_config(split="val")
