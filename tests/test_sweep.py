"""Sweeps: a grid of hashed, resumable cells through the local launcher and submitit's local executor."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli.arguments import build_parser
from benchmark.cli.sweep import expand
from tests.conftest import TINY_SYNTHPED

REPO = Path(__file__).resolve().parents[1]
TINY = ",".join(f"{k}={v}" for k, v in TINY_SYNTHPED.items())


def sweep_argv(tmp_path: Path, *extra: str) -> list[str]:
    return ["sweep", "--defense", "none,metric-at", "--seeds", "0,1", "--attack", "fgsm", "--epochs", "1",
            "--dataset-opt", TINY, "--height", "64", "--width", "32", "--device", "cpu", "--threads", "1",
            "--results-dir", str(tmp_path / "results"), "--leaderboard-dir", str(tmp_path / "boards"),
            "--sweep-dir", str(tmp_path / "sweep"), *extra]


def test_grid_expands_into_training_and_dependent_evaluation_cells(tmp_path):
    cells = expand(build_parser().parse_args(sweep_argv(tmp_path)))
    train = [c for c in cells if c.kind == "train"]
    evals = [c for c in cells if c.kind == "eval"]
    assert len(train) == len(evals) == 4 and len({c.id for c in cells}) == 8
    assert {e.depends for e in evals} == {t.id for t in train}
    again = expand(build_parser().parse_args(sweep_argv(tmp_path)))
    assert [c.id for c in again] == [c.id for c in cells]  # names are hashes of the run specifications
    # the training seeds vary on one data set: every cell carries --data-seed
    other = expand(build_parser().parse_args(sweep_argv(tmp_path, "--data-seed", "3")))
    assert {c.spec["data_seed"] for c in other} == {3} and {c.spec["seed"] for c in other} == {0, 1}


def test_ablation_expands_into_the_studys_recipes_with_their_options(tmp_path):
    from benchmark.run.spec import defense_label, make_spec
    from defenses.base import DEFENSES

    argv = [a for a in sweep_argv(tmp_path) if a != "none,metric-at"]
    argv.remove("--defense")
    cells = expand(build_parser().parse_args([*argv, "--ablation", "ddid"]))
    steps = DEFENSES.get("ddid").ablation
    assert len(cells) == 2 * 2 * len(steps) and len(steps) == 7
    labels = set()
    for cell in cells:
        opts = dict(o.split("=", 1) for o in cell.recipe_options)
        labels.add(make_spec(defense=cell.spec["defense"]["name"], defense_options=opts).defense.label)
    assert labels == {defense_label(s.defense, s.options) for s in steps}
    assert "ddid" in labels and "metric-at" in labels
    assert "ddid[ablate=adv-learning+diffusion+fnes+self-meta]" in labels


@pytest.mark.parametrize("extra, message", [(("--ablation", "none"), "declares no ablation study"),
                                            (("--ablation", "ddid", "--defense-opt", "ablate=fnes"),
                                             "drop --defense-opt")])
def test_bad_ablation_fails_in_one_line(tmp_path, capsys, extra, message):
    from benchmark.cli.main import main

    assert main([*sweep_argv(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_bad_grid_fails_in_one_line_before_any_cell(tmp_path, capsys):
    from benchmark.cli.main import main

    argv = sweep_argv(tmp_path)
    argv[argv.index("--seeds") + 1] = "0,x"
    assert main(argv) == 2
    assert "seed" in capsys.readouterr().err
    assert main([*sweep_argv(tmp_path), "--launcher", "nope"]) == 2
    assert not (tmp_path / "sweep").exists()


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "RRB_CACHE_DIR": str(tmp_path / "cache")}


def _done(tmp_path: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime for p in (tmp_path / "sweep" / "cells").glob("*/done")}


@pytest.mark.slow
def test_local_sweep_killed_midway_resumes_without_redoing_done_cells(tmp_path):
    cmd = [sys.executable, "-m", "benchmark", *sweep_argv(tmp_path, "--launcher-opt", "workers=1")]
    proc = subprocess.Popen(cmd, env=_env(tmp_path), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(_done(tmp_path)) < 2 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, as a cancelled job would be
    proc.wait()
    first = _done(tmp_path)
    assert 2 <= len(first) < 8
    status = subprocess.run([*cmd, "--status"], env=_env(tmp_path), cwd=REPO, capture_output=True, text=True)
    assert f"{len(first)} done" in status.stdout
    again = subprocess.run(cmd, env=_env(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:] + again.stdout[-2000:]
    assert f"{len(first)} already done" in again.stdout
    after = _done(tmp_path)
    assert len(after) == 8 and all(after[k] == v for k, v in first.items())  # done cells were not redone
    import pandas as pd

    board = pd.read_csv(tmp_path / "boards" / "custom" / "synthped.csv")
    assert set(board["defense"]) == {"none", "metric-at"} and set(board["seed"]) == {0, 1}


@pytest.mark.slow
def test_terminating_a_local_sweep_stops_its_workers(tmp_path):
    argv = sweep_argv(tmp_path, "--launcher-opt", "workers=1")
    argv[argv.index("--epochs") + 1] = "500"  # a cell that outlasts the test unless its worker is stopped
    cmd = [sys.executable, "-m", "benchmark", *argv]
    proc = subprocess.Popen(cmd, env=_env(tmp_path), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        markers: list[Path] = []
        while time.time() < deadline and not markers and proc.poll() is None:
            markers = list((tmp_path / "sweep" / "cells").glob("*/running"))
            time.sleep(0.1)
        assert markers, "no cell started"
        worker = json.loads(markers[0].read_text())["pid"]
        proc.send_signal(signal.SIGTERM)  # the sweep alone, as `kill <pid>` would: not its process group
        proc.wait(timeout=120)
        deadline = time.time() + 20
        while time.time() < deadline and _alive(worker):
            time.sleep(0.2)
        assert not _alive(worker), "the worker outlived its sweep"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    status = subprocess.run([*cmd, "--status"], env=_env(tmp_path), cwd=REPO, capture_output=True, text=True)
    assert "running" not in status.stdout.splitlines()[-1]  # the cell it held is redone by the next sweep


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"  # a zombie has exited


@pytest.mark.slow
def test_submitit_local_executor_runs_the_same_cells(tmp_path):
    cmd = [sys.executable, "-m", "benchmark", *sweep_argv(tmp_path, "--launcher", "submitit", "--launcher-opt",
                                                          "cluster=local,time_limit=20")]
    out = subprocess.run(cmd, env=_env(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-2000:]
    assert len(_done(tmp_path)) == 8 and "8 done" in out.stdout
    assert list((tmp_path / "sweep" / "submitit").iterdir())  # submitit's own job folders


def test_submitit_runs_each_cell_as_a_two_process_torch_distributed_job(tmp_path):
    import json

    argv = sweep_argv(tmp_path, "--launcher", "submitit", "--launcher-opt",
                      "cluster=local,time_limit=20,processes_per_cell=2")
    argv[argv.index("--defense") + 1] = "none"
    argv[argv.index("--seeds") + 1] = "0"
    cells = expand(build_parser().parse_args(argv), processes_per_cell=2)
    assert all(c.spec["train_processes"] == 2 for c in cells)
    out = subprocess.run([sys.executable, "-m", "benchmark", *argv], env=_env(tmp_path), cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-2000:]
    assert len(_done(tmp_path)) == 2 and "2 done" in out.stdout
    records = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "checkpoints").glob("*/train.json")]
    assert [r["key"].get("world_size") for r in records] == [2]  # trained once, by both processes together
    assert len(list((tmp_path / "results").glob("*/per_query.csv"))) == 1  # rank 0 alone wrote the run


@pytest.fixture
def tiny_suite(monkeypatch):
    """A one-member suite (3 APGD iterations) standing in for standard-v1, so the test runs in seconds."""
    from attacks.suites import SUITES, Suite, SuiteInfo, SuiteMember
    from benchmark.core.registry import Entry

    SUITES.names()
    suite = Suite("tiny-v1", (SuiteMember("apgd-ce", (("steps", 3),)),), floor=0.01, summary="test suite")
    monkeypatch.setattr(SUITES, "_entries", {**SUITES._entries, suite.name: Entry(suite.name, suite, SuiteInfo())})
    return suite


def _rows(board: Path) -> pd.DataFrame:
    provenance = ["run_id", "date", "command", "attack_seconds", "train_seconds", "git_commit", "train_commit",
                  "train_date"]
    frame = pd.read_csv(board)
    return frame.drop(columns=[c for c in provenance if c in frame.columns]).sort_values(["attack", "eps"])


def test_a_sweep_cell_runs_every_run_option_and_writes_the_rows_run_writes(tmp_path, tiny_suite):
    """--check-convergence and --train-dataset reach the cells (they once were dropped by a flag list)."""
    from benchmark.cli.main import main
    from benchmark.cli.sweep import prepare, run_cell
    from tests.conftest import shared_data

    pku = shared_data("pku-reid-subset")
    common = ["--defense", "none", "--attack", "fgsm,tiny-v1", "--check-convergence", "--train-dataset", "pku",
              "--train-data-root", str(pku), "--epochs", "1", "--dataset-opt", TINY, "--height", "64", "--width",
              "32", "--device", "cpu", "--threads", "1"]
    assert main(["run", *common, "--results-dir", str(tmp_path / "r1"), "--leaderboard-dir",
                 str(tmp_path / "b1")]) == 0
    args = build_parser().parse_args(["sweep", *common, "--seeds", "0", "--results-dir", str(tmp_path / "r2"),
                                      "--leaderboard-dir", str(tmp_path / "b2"), "--sweep-dir",
                                      str(tmp_path / "sweep")])
    cells = expand(args)
    assert [c.spec["check_convergence"] for c in cells] == [False, True]
    assert all(c.spec["train_data"]["name"] == "pku" for c in cells)
    prepare(cells, tmp_path / "sweep", args)
    for cell in cells:  # as a launcher's worker runs them: training first
        assert run_cell(str(cell.folder(tmp_path / "sweep"))) == 0, (cell.folder(tmp_path / "sweep") /
                                                                       "log.txt").read_text()[-2000:]
    ran, swept = _rows(tmp_path / "b1" / "custom" / "synthped.csv"), _rows(tmp_path / "b2" / "custom" / "synthped.csv")
    assert set(ran["attack"]) == {"clean", "fgsm", "tiny-v1", "worst-case"}
    assert ran["train_dataset"].eq("pku").all()
    pd.testing.assert_frame_equal(ran.reset_index(drop=True), swept.reset_index(drop=True))


def test_a_rerun_writes_where_the_rerun_says(tmp_path):
    """Unfinished cells take the rerun's runtime and write options; finished cells are left as they are."""
    from benchmark.cli.sweep import prepare

    first = build_parser().parse_args(sweep_argv(tmp_path))
    cells = expand(first)
    prepare(cells, tmp_path / "sweep", first)
    done = cells[0].folder(tmp_path / "sweep")
    (done / "done").write_text("{}")
    again = build_parser().parse_args([*sweep_argv(tmp_path), "--leaderboard-dir", str(tmp_path / "other"),
                                       "--threads", "2"])
    prepare(expand(again), tmp_path / "sweep", again)
    records = {c.id: json.loads((c.folder(tmp_path / "sweep") / "cell.json").read_text()) for c in cells}
    evals = [r for r in records.values() if r["kind"] == "eval"]
    assert all(r["write"]["leaderboard_dir"] == str(tmp_path / "other") for r in evals)
    assert all(r["runtime"]["threads"] == 2 for cid, r in records.items() if cid != cells[0].id)
    assert records[cells[0].id]["runtime"]["threads"] == 1
    assert all(r["spec"]["digest"].startswith(cid.split("-", 1)[1]) for cid, r in records.items())


def test_a_cell_another_sweep_is_running_is_left_to_it(tmp_path, capsys):
    from filelock import FileLock

    from benchmark.cli.sweep import CLAIM, run_cell

    cell = tmp_path / "cell"
    cell.mkdir()
    (cell / "cell.json").write_text("{}")  # would fail if run
    with FileLock(str(cell / CLAIM)):  # the first sweep's worker holds its claim
        assert run_cell(str(cell)) == 0
    assert "being run by another sweep" in capsys.readouterr().err
    assert not (cell / "failed").exists() and not (cell / "done").exists() and not (cell / "running").exists()
    assert run_cell(str(cell)) == 1 and (cell / "failed").is_file()  # unclaimed: this worker runs it
