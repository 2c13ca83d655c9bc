"""No user command changes the repository: in a fresh clone, the README's commands leave `git status` empty."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_SYNTHPED

REPO = Path(__file__).resolve().parents[1]
TINY = ",".join(f"{k}={v}" for k, v in TINY_SYNTHPED.items())
SMALL = ["--epochs", "1", "--dataset-opt", TINY, "--height", "64", "--width", "32", "--device", "cpu"]


def clean_clone_commands(home: Path) -> list[list[str]]:
    """Every user command but `publish` (the one that writes the repository), at toy size."""
    return [
        ["list"], ["--version"],
        ["run", "--defense", "none", "--attack", "fgsm", *SMALL],
        ["eval", "--defense", "none", "--attack", "fgsm", *SMALL],
        ["train", "--defense", "none", *SMALL],
        ["sweep", "--defense", "none", "--seeds", "0", "--attack", "fgsm", *SMALL, "--leaderboard-dir",
         str(home / "cluster-boards"), "--launcher-opt", "workers=1"],
        ["merge", str(home / "cluster-boards")],
        ["validate", "--defense", "none"],
        ["throughput", "--attack", "fgsm", "--defense", "none", "--repeats", "1", "--batch-size", "8"],
        ["table"], ["table", "--dataset", "pku"],
        # two published runs, looked up in the clone's results/
        ["compare", "20261202-224625-pku-ddid-reidnet-s-s0-33ca2e",
         "20261202-214751-pku-metric-at-reidnet-s-s0-ffdd6e"],
        ["plots", "--results-dir", str(home / "no-runs")],  # board figures; run figures are checked below
        ["site"],
    ]


@pytest.mark.slow
def test_user_commands_leave_a_fresh_clone_clean(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    home = tmp_path / "home"
    env = {**os.environ, "RRB_HOME": str(home), "RRB_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("PYTHONPATH", None)
    commands = clean_clone_commands(home)
    for argv in commands:
        out = subprocess.run([sys.executable, "-m", "benchmark", *argv], cwd=clone, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, f"{argv}: {out.stderr[-1500:]}"
    # a run's figures, redrawn from its committed records next to them, are ignored files
    run = sorted(p for p in (clone / "results").iterdir() if (p / "examples.npz").is_file())[0]
    subprocess.run([sys.executable, "-c", f"from benchmark.report.plots import replot_run; "
                    f"from pathlib import Path; assert replot_run(Path({str(run)!r}))"], cwd=clone, env=env,
                   check=True, timeout=600)
    # `plots` drew, from what is committed, every figure a page cites
    pages = [clone / "README.md", *(clone / "docs").glob("*.md"), clone / "leaderboards" / "README.md"]
    cited = {m for page in pages for m in re.findall(r"leaderboards/figures/([\w./-]+\.png)", page.read_text())}
    drawn = {p.relative_to(clone / "leaderboards" / "figures").as_posix()
             for p in (clone / "leaderboards" / "figures").rglob("*.png")}
    assert len(cited) >= 4 and cited <= drawn, cited - drawn
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True)
    assert status.stdout == "", status.stdout
    assert (home / "runs").is_dir() and (home / "leaderboards" / "custom" / "synthped.csv").is_file()
    assert (home / "validate-none.md").is_file()
