"""Bad input ends in one line naming the problem and the fix, exit code 2, before any expensive work."""

from __future__ import annotations

import random

import pytest

from benchmark.cli.main import main

LONG = "x" * 300


@pytest.mark.parametrize("argv, message", [
    (["run", "--seed", "18446744073709551616"], "must be between 0 and 4294967295"),
    (["run", "--eps", "1e-7"], "did you mean --eps 2.55e-05"),
    (["run", "--eps", "0.03"], "did you mean --eps 7.65"),
    (["run", "--eps", "0.0000001/255"], "rounds to 0"),
    (["throughput", "--batch-size", "0"], "at least 1"),
    (["throughput", "--repeats", "0"], "at least 1"),
    (["validate", "--defense", "none", "--epochs", "0"], "at least 1"),
    (["sweep", "--defense", ","], "names no defense"),
    (["table", "--dataset", "nosuch"], "no board"),
    (["table", "--leaderboard-dir", "/nonexistent"], "no board"),
    (["table", "--readme", "/nonexistent.md"], "no such file"),
    (["run", "--dataset-opt", "num_cams=1"], "option num_cams=1 must be in [2, 1000]"),
    (["run", "--dataset-opt", "num_cams=0"], "option num_cams=0 must be in [2, 1000]"),
    (["run", "--dataset-opt", "height=0"], "option height=0 must be in [16, 1024]"),
    (["run", "--dataset-opt", "width=-5"], "option width=-5 must be in [16, 1024]"),
    (["run", "--dataset-opt", "min_images=0"], "option min_images=0 must be in [2, 1000]"),
    (["run", "--dataset-opt", "tail_power=-6"], "option tail_power=-6 must be in (0, 100]"),
    (["run", "--dataset-opt", "min_images=20,max_images=10"], "at most max_images"),
    (["run", "--dataset-opt", "dominant_fraction=5"], "option dominant_fraction=5 must be in [0, 1]"),
    (["run", "--defense", "metric-at", "--defense-opt", "eps=-8/255"], "option eps=-8/255 must be in (0, 1]"),
    (["run", "--defense", "metric-at", "--defense-opt", "steps=-3"], "option steps=-3 must be in [1, 1000]"),
    (["run", "--attack", "fna", "--attack-opt", "fna:steps=0"], "option steps=0 must be in [1, 100000]"),
    (["run", "--attack", "query-bb", "--attack-opt", "query-bb:queries=-1"], "must be in [1, 10000000]"),
    (["run", "--defense", "ddid", "--defense-opt", "mode=dream"], "option mode=dream must be one of generate, "),
    (["run", "--defense", "ddid", "--defense-opt", "meta_split=1"], "option meta_split=1 must be in (0, 1)"),
    (["run", "--defense", "ddid", "--defense-opt", "channels=16+0"], "option channels=16+0 must be in [1, 1024]"),
    (["run", "--defense", "jpeg", "--defense-opt", "quality=101"], "option quality=101 must be in [1, 100]"),
    (["run", "--attack", "apgd-ce", "--attack-opt", "apgd-ce:rho=0"], "option rho=0 must be in (0, 1]"),
    (["run", "--dataset", "pku", "--data-root", "/", "--dataset-opt", "test_fraction=1"], "must be in (0, 1)"),
    (["run", "--dataset", "market1501", "--data-root", LONG], "File name too long"),
    (["run", "--backbone-weights", LONG], "File name too long"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert _code([*argv, *(["--no-write"] if argv[0] == "run" else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def _code(argv: list[str]) -> int:
    """The exit code of a command line (argparse's own errors exit rather than return)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_a_file_system_refusal_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["validate", "--defense", "none", "--report", str(blocker / "sub" / "r.md")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def _option_keys() -> list[tuple[str, str, str]]:
    from attacks import ATTACKS
    from benchmark.core.options import option_table
    from benchmark.data import DATASETS
    from defenses import DEFENSES

    keys = [("--attack-opt", name, key) for name in ATTACKS.names()
            for key, _, _, _ in option_table(ATTACKS.get(name).Options)]
    keys += [("--defense-opt", name, key) for name in DEFENSES.names()
             for key, _, _, _ in option_table(DEFENSES.get(name).Options)]
    keys += [("--dataset-opt", name, key) for name in DATASETS.names() if DATASETS.meta(name).options
             for key, _, _, _ in option_table(DATASETS.meta(name).options)]
    return keys


HOSTILE = ["", "nan", "inf", "-inf", "1e999", "-1", "0x10", "ünïcødé", "1/0", "true false", "9" * 40, "{{7*7}}", "a\nb"]


def test_random_option_values_never_give_a_traceback(capsys, monkeypatch):
    """Every registered attack, defense and data-set option, fed hostile strings: either one line and exit 2, or a
    valid specification (which would run; here it stops before any work)."""
    import benchmark.cli.commands as commands

    class Reached(Exception):
        pass

    def stop(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(commands, "execute", stop)
    rng = random.Random(0)
    refused = 0
    for flag, name, key in _option_keys():
        for value in rng.sample(HOSTILE, 3):
            if flag == "--attack-opt":
                argv = ["eval", "--attack", name, flag, f"{name}:{key}={value}"]
            elif flag == "--defense-opt":
                argv = ["eval", "--defense", name, flag, f"{key}={value}"]
            else:
                root = [] if name == "synthped" else ["--data-root", "/"]
                argv = ["eval", "--dataset", name, *root, flag, f"{key}={value}"]
            try:
                code = _code(argv)
            except Reached:
                continue
            err = capsys.readouterr().err
            assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
            refused += 1
    assert refused > 50


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_from_python_are_refused_like_strings(value):
    """`benchmark.evaluate(..., attack_options=...)` passes numbers, not strings: NaN compares False with every
    bound, so without its own check `floor=nan` would be admitted and stop no query."""
    from attacks.apgd import APGDOptions
    from benchmark.core.errors import BenchmarkError
    from benchmark.core.options import build_options

    with pytest.raises(BenchmarkError, match="floor=.* is not finite"):
        build_options(APGDOptions, "attack 'apgd-sap'", {"floor": value})


def test_weights_holding_nan_are_refused_before_training(tmp_path, capsys):
    import torch

    from benchmark.models.backbones import build_backbone

    state = build_backbone("reidnet-s")[0].state_dict()
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    assert _code(["run", "--backbone-weights", str(tmp_path / "nan.pt"), "--no-write"]) == 2
    err = capsys.readouterr().err.strip()
    assert "NaN or infinity" in err and first in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("flag", ["--results-dir", "--leaderboard-dir"])
def test_an_unusable_destination_is_refused_before_training(tmp_path, capsys, monkeypatch, flag):
    import benchmark.run.execute as execute

    def never(*args, **kwargs):
        raise AssertionError("the run started before its destination was checked")

    monkeypatch.setattr(execute, "load_workspace", never)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert _code(["run", "--defense", "none", "--attack", "fgsm", "--epochs", "1", flag, str(blocker / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "could not use" in err and str(blocker) in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("options, message", [
    (["--launcher-opt", "cluster=nosuch"], "unknown cluster 'nosuch'"),
    ([], "no `srun` on the PATH"),
    (["--launcher-opt", "cluster=local,processes_per_cell=0"], "processes_per_cell must be"),
])
def test_a_sweep_its_launcher_cannot_run_is_refused_before_any_cell(tmp_path, capsys, monkeypatch, options, message):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    sweep_dir = tmp_path / "sweep"
    assert _code(["sweep", "--defense", "none", "--launcher", "submitit", *options, "--sweep-dir", str(sweep_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not sweep_dir.exists()
