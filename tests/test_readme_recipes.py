"""The plug-in recipes of docs/plugins.md ("Adding an attack", "Submitting a defense") work exactly as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_SYNTHPED

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```(python|toml)\n(# (\S+)\n.*?)```", re.S)


def recipe_files(section: str) -> dict[str, str]:
    """{relative path: content} of the code blocks of a docs/plugins.md section whose first line names a file."""
    text = (REPO / "docs" / "plugins.md").read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 3)
    return {m.group(3): m.group(2) for m in BLOCK.finditer(text[start:end if end > 0 else None])}


@pytest.fixture(scope="module")
def installed_recipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    target = root / "site"
    packages = set()
    for section in ("Adding an attack", "Submitting a defense"):
        files = recipe_files(section)
        assert files, f"docs/plugins.md section '{section}' lays out no files"
        for rel, content in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(content)
            packages.add(rel.split("/")[0])
    for package in sorted(packages):  # `pip install ./<package>`, as the recipe says (into a private target)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--target", str(target), f"./{package}"], cwd=root, check=True)
    return target


def _cli(target: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)]), "RRB_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "benchmark", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_readme_recipes_install_and_run(installed_recipes, tmp_path):
    listed = _cli(installed_recipes, tmp_path / "cache", "list")
    assert listed.returncode == 0 and "far-push" in listed.stdout and "self-at" in listed.stdout
    assert "failed to load" not in listed.stdout
    opts = ",".join(f"{k}={v}" for k, v in TINY_SYNTHPED.items())
    out = _cli(installed_recipes, tmp_path / "cache", "run", "--defense", "self-at", "--attack", "far-push,sma",
               "--epochs", "1", "--dataset-opt", opts, "--height", "64", "--width", "32", "--device", "cpu",
               "--results-dir", str(tmp_path / "r"), "--leaderboard-dir", str(tmp_path / "l"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "far-push" in out.stdout and "sma" in out.stdout
    import pandas as pd

    board = pd.read_csv(tmp_path / "l" / "custom" / "synthped.csv")
    assert set(board["defense_dist"]) == {"my-defense 0.1"}
    assert set(board.loc[board["attack"] == "far-push", "attack_dist"]) == {"far-push 0.1"}
    assert set(board.loc[board["attack"] == "far-push", "seen"]) == {"unseen"}
    assert set(board.loc[board["attack"] == "sma", "seen"]) == {"seen"}
    checked = _cli(installed_recipes, tmp_path / "cache", "validate", "--defense", "self-at", "--device", "cpu",
                   "--report", str(tmp_path / "validate-self-at.md"))
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert "PASS" in (tmp_path / "validate-self-at.md").read_text()


@pytest.mark.slow
def test_a_plugin_that_fails_to_import_is_named(tmp_path):
    pkg = tmp_path / "src" / "broken_def"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("import no_such_module_anywhere\n")
    (tmp_path / "src" / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "broken-def"\nversion = "0.1"\n[tool.setuptools]\npackages = ["broken_def"]\n'
        '[project.entry-points."reid_robustness_bench.defenses"]\nbroken = "broken_def"\n')
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(tmp_path / "site"), str(tmp_path / "src")], check=True)
    out = _cli(tmp_path / "site", tmp_path / "cache", "run", "--defense", "broken")
    assert out.returncode == 2
    err = out.stderr.strip()
    assert len(err.splitlines()) == 1 and "plugin 'broken' failed to import" in err and "no_such_module" in err
