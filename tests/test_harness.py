"""End to end: harness, run folder, leaderboards, sanity flags, plots, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmark.report.runs import write_run
from benchmark.run.execute import execute
from benchmark.run.outcome import format_summary
from tests.conftest import TINY_SYNTHPED, cpu_runtime, shared_data, tiny_config

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "benchmark", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, check=check)


def test_cli_lists_every_registry():
    out = cli("list", check=True).stdout
    for name in ("synthped", "pku", "reidnet-s", "resnet50", "fna", "query-bb", "art-pgd", "ddid", "metric-at"):
        assert name in out


@pytest.mark.parametrize("args, message", [
    (("run", "--defense", "nope"), "unknown defense 'nope'. Did you mean 'none'?"),
    (("run", "--attack", "fnaa"), "Valid attacks:"),
    (("run", "--dataset", "market1501", "--data-root", "/no/such/dir"), "does not exist"),
    (("run", "--backbone", "resnet5O"), "Did you mean 'resnet50'"),
])
def test_cli_bad_input_is_one_clear_line(args, message):
    out = cli(*args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_run_writes_results_leaderboards_and_plots(tiny_ws, tmp_path):
    cfg = tiny_config(defense="metric-at", attacks="fna,sma,query-bb", eps="4,8", epochs=2,
                      attack_options={"query-bb": {"queries": "20"}})
    outcome = execute(cfg, cpu_runtime(), workspace=tiny_ws)
    assert {r.seen.value for r in outcome.attacks if r.attack == "fna"} == {"seen"}
    assert {r.seen.value for r in outcome.attacks if r.attack == "sma"} == {"unseen"}
    paths = write_run(outcome, tmp_path / "results", tmp_path / "boards")
    board = pd.read_csv(tmp_path / "boards" / "custom" / "synthped.csv")
    assert len(board) == 1 + 3 * 2 + 2  # clean, 3 attacks x 2 eps, and the per-query worst case at each eps
    assert set(board.loc[board["seen"] == "worst-case", "attack"]) == {"worst-case"}
    assert set(board["eps"]) == {"0", "4/255", "8/255"}
    assert board["git_commit"].notna().all() and (board["seed"] == 0).all()
    assert board.loc[board["attack"] == "query-bb", "queries_per_image"].eq(20).all()
    # every row's mAP and R1 carry their identity-bootstrap interval, and the interval holds the estimate
    for metric in ("mAP", "R1"):
        assert (board[f"{metric}_low"] <= board[metric] + 1e-9).all() and (board[metric] <= board[f"{metric}_high"]
                                                                           + 1e-9).all()
    assert (board["mAP_high"] - board["mAP_low"]).gt(0).all()
    summary = pd.read_csv(tmp_path / "boards" / "custom" / "summary-synthped.csv")
    assert len(summary) == 1 and summary["seen_mAP_mean"].notna().all()
    clean_row = board[board["attack"] == "clean"].iloc[0]
    assert summary["clean_mAP_low"].item() == clean_row["mAP_low"]
    run = paths["run folder"]
    summary = format_summary(outcome).splitlines()
    fna, sma, qbb = (next(r.metrics.mAP for r in outcome.attacks if r.attack == a and r.eps == 8 / 255)
                     for a in ("fna", "sma", "query-bb"))
    row_8 = next(line for line in summary if " 8/255 " in line)
    assert f"{(sma + qbb) / 2:.2f}/{min(sma, qbb):.2f}" in row_8 and f"{fna:.2f}/{fna:.2f}" in row_8
    for name in ("config.json", "metrics.json", "log.txt", "per_id_ap.csv", "ranking.png", "adversarial.pdf"):
        assert (run / name).is_file(), name
    from benchmark.report.plots import plot_all

    figures = plot_all(tmp_path / "boards" / "custom", tmp_path / "results", tmp_path / "figs")
    names = {p.name for p in figures}
    assert {"synthped-eps-curves.png", "synthped-heatmap.pdf", "synthped-seen-unseen.png", "synthped-cmc.png",
            "ranking.png"} <= names


@pytest.mark.slow
def test_cli_run_on_tiny_synthped(tmp_path):
    opts = ",".join(f"{k}={v}" for k, v in TINY_SYNTHPED.items())
    out = cli("run", "--defense", "none", "--attack", "fgsm,odfa", "--epochs", "2", "--dataset-opt", opts,
              "--height", "64", "--width", "32", "--results-dir", str(tmp_path / "r"),
              "--leaderboard-dir", str(tmp_path / "l"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "clean" in out.stdout and "odfa" in out.stdout and "unseen" in out.stdout
    summary = out.stdout[out.stdout.index("summary"):]
    assert "unseen mean/worst" in summary and "8/255" in summary
    assert "no sanity flags raised" in summary or "FLAG " in summary  # a 2-epoch model may raise some
    assert (tmp_path / "l" / "custom" / "synthped.csv").is_file() and not (tmp_path / "l" / "synthped.csv").exists()


@pytest.mark.slow
def test_pku_real_images_run():
    root = shared_data("pku-reid-subset")
    cfg = tiny_config(dataset="pku", data_root=str(root), dataset_options={}, attacks="fgsm", epochs=2,
                      height=128, width=48)
    outcome = execute(cfg, cpu_runtime())
    assert outcome.clean.num_queries > 0 and outcome.attacks[0].metrics.mAP <= outcome.clean.mAP + 1


def test_cuda_request_without_cuda_is_a_clear_error():
    import torch

    from benchmark.core.device import resolve_device
    from benchmark.core.errors import BenchmarkError

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(BenchmarkError, match="no CUDA device"):
        resolve_device("cuda")
