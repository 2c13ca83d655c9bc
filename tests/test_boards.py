"""Official boards take only standard runs from a clean tree; custom runs go elsewhere; summaries are one run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli.main import main
from benchmark.report.boards import write_leaderboards
from tests.test_leaderboard import clean_row, make_row
from tests.test_spec import no_work  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parents[1]


def test_official_rows_need_a_clean_tree(monkeypatch, no_work, capsys):  # noqa: F811
    import benchmark.report.runs as runs

    monkeypatch.setattr(runs, "tree_dirty", lambda: True)
    assert main(["run", "--defense", "none", "--attack", "fgsm"]) == 2
    err = capsys.readouterr().err
    assert "uncommitted changes" in err and "--allow-dirty" in err and len(err.strip().splitlines()) == 1


def test_summary_row_comes_from_one_run(tmp_path):
    full = [clean_row(), make_row(attack="fna", mAP=10.0), make_row(attack="sma", mAP=20.0)]
    for r in full:
        r.run_id, r.command = "full", "python -m benchmark run --attack all"
    write_leaderboards(full, tmp_path)
    sweep = [clean_row(), make_row(attack="fna", mAP=30.0, eps="4/255")]
    for r in sweep:
        r.run_id, r.command = "sweep", "python -m benchmark run --attack fna --eps 4"
    write_leaderboards(sweep, tmp_path)
    summary = pd.read_csv(tmp_path / "summary-toy.csv")
    assert len(summary) == 1
    row = summary.iloc[0]
    assert row["run_id"] == "full" and row["command"].endswith("--attack all") and row["attacks"] == 2
    assert row["robust_mAP_mean"] == 15.0
    board = pd.read_csv(tmp_path / "toy.csv")
    assert len(board) == 4  # the sweep's 4/255 row joins the board; the summary stays with the full run


def test_custom_rows_never_touch_official_boards(tmp_path):
    write_leaderboards([clean_row(), make_row()], tmp_path)
    before = (tmp_path / "toy.csv").read_bytes(), (tmp_path / "summary-toy.csv").read_bytes()
    custom = [clean_row(), make_row(mAP=1.0)]
    for r in custom:
        r.settings = "epochs=2"
    write_leaderboards(custom, tmp_path, official=False)
    assert ((tmp_path / "toy.csv").read_bytes(), (tmp_path / "summary-toy.csv").read_bytes()) == before
    assert pd.read_csv(tmp_path / "custom" / "toy.csv")["settings"].eq("epochs=2").all()


@pytest.mark.slow
def test_a_short_training_run_leaves_the_committed_official_board_byte_identical(tmp_path):
    boards = tmp_path / "boards"
    shutil.copytree(REPO / "leaderboards", boards, ignore=shutil.ignore_patterns("figures", "custom"))
    before = {p.name: p.read_bytes() for p in boards.glob("*.csv")}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "benchmark", "run", "--defense", "none", "--attack", "fgsm",
                          "--epochs", "2", "--device", "cpu", "--results-dir", str(tmp_path / "r"),
                          "--leaderboard-dir", str(boards)], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "custom run (not the standard protocol): epochs=2" in out.stdout
    assert {p.name: p.read_bytes() for p in boards.glob("*.csv")} == before
    custom = pd.read_csv(boards / "custom" / "synthped.csv")
    assert set(custom["settings"]) == {"epochs=2"} and set(custom["attack"]) == {"clean", "fgsm"}


def test_the_spec_is_the_source_of_the_row_key():
    from benchmark.report.boards import ROW_KEY
    from benchmark.run.spec import make_spec

    spec = make_spec(defense="ddid", defense_options={"ablate": "self-meta+fnes"}, epochs=2)
    key = spec.row_key("fna", "8/255")
    assert tuple(key) == ROW_KEY
    assert key["defense"] == "ddid[ablate=fnes+self-meta]" and key["settings"] == "epochs=2"


def test_provenance_reads_the_whole_checkout():
    """The dirty-tree check looks at the checkout's root (attacks/ and defenses/ too), not only benchmark/."""
    from benchmark.core.provenance import REPO

    assert (REPO / "pyproject.toml").is_file() and (REPO / "attacks").is_dir()


def test_rows_and_cache_keys_tell_machines_apart():
    """CPU model and ISA, GPU, CUDA/cuDNN and the numeric libraries' versions: in provenance and every cache key."""
    import dataclasses

    import torch

    from benchmark.core.device import numerics
    from benchmark.core.provenance import provenance
    from benchmark.report.boards import LeaderboardRow

    cpu = torch.device("cpu")
    prov, key = provenance(cpu, 0), numerics(cpu)
    assert prov["cpu_capability"] == torch.backends.cpu.get_cpu_capability() == key["cpu_capability"]
    assert prov["cpu_model"] and prov["cpu_model"] == key["cpu_model"]
    assert all(f"{lib}=" in prov["libraries"] for lib in ("diffusers", "kornia", "adversarial-robustness-toolbox",
                                                          "numpy"))
    fields = {f.name for f in dataclasses.fields(LeaderboardRow)}
    assert {"cpu_model", "cpu_capability", "gpu", "cuda_version", "cudnn_version", "libraries"} <= fields
