"""A run killed during its attacks resumes on the next call and loses no finished cell."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_SYNTHPED

REPO = Path(__file__).resolve().parents[1]
ATTACKS = "fgsm,ifgsm,mifgsm,odfa,sma,fna"


def _command(tmp_path: Path) -> list[str]:
    opts = ",".join(f"{k}={v}" for k, v in TINY_SYNTHPED.items())
    return [sys.executable, "-m", "benchmark", "run", "--defense", "none", "--attack", ATTACKS, "--epochs", "1",
            "--dataset-opt", opts, "--height", "64", "--width", "32", "--device", "cpu", "--threads", "1",
            "--attack-opt", "fgsm:random_start=false",
            # a long last cell keeps the run alive after the first cell lands, even on a loaded machine
            "--attack-opt", "sma:steps=2000", "--results-dir", str(tmp_path / "results"),
            "--leaderboard-dir", str(tmp_path / "boards")]


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "RRB_CACHE_DIR": str(cache)}


def _kill_after_first_cell(cmd: list[str], env: dict[str, str], cells: Path, sig: int) -> subprocess.CompletedProcess:
    # a shell's background job inherits SIGINT ignored, and Python then never raises KeyboardInterrupt:
    # give the run the default disposition, as a terminal would
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if cells.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in cells.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killed_run_resumes_without_redoing_finished_cells(sig, tmp_path):
    cache = tmp_path / "cache"
    cmd, env = _command(tmp_path), _env(cache)
    killed = _kill_after_first_cell(cmd, env, cache / "cells", sig)
    if sig == signal.SIGINT:
        assert killed.returncode == 130
        err = killed.stderr.strip().splitlines()[-1]
        assert err.startswith("interrupted:") and "resume" in err and "Traceback" not in killed.stderr
    else:
        assert killed.returncode == -signal.SIGKILL
    finished = {p.name for p in (cache / "cells").iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert finished
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())  # nothing half-written
    again = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    line = next(li for li in again.stdout.splitlines() if li.startswith("resumed:"))
    assert int(line.split()[1]) >= len(finished)
    cells_after = {p.name for p in (cache / "cells").iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert finished <= cells_after and len(cells_after) == len(ATTACKS.split(","))
    runs = list((tmp_path / "results").iterdir())
    assert len(runs) == 1 and not runs[0].name.startswith(".")
    assert not list(cache.rglob(".tmp-*"))
    # a third call resumes every cell and gives the same numbers
    third = subprocess.run([*cmd, "--no-write"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert f"resumed: {len(ATTACKS.split(','))} of" in third.stdout
    table = [li for li in again.stdout.splitlines() if li.split()[:1] and li.split()[0] in ATTACKS.split(",")]
    assert table == [li for li in third.stdout.splitlines() if li in table]
