"""The run specification: strict one-line errors before any work, canonical identity, official vs custom."""

from __future__ import annotations

import time

import pytest
import torch

from benchmark.cli.main import main
from benchmark.core.errors import BenchmarkError
from benchmark.run.spec import make_spec, parse_eps
from tests.conftest import SHARED

MARKET = SHARED / "data" / "market1501-sample"


@pytest.fixture
def no_work(monkeypatch):
    """Fail loudly if a command gets as far as loading data or training."""
    import benchmark.run.execute as harness

    def forbidden(*args, **kwargs):
        raise AssertionError("validation must fail before any data is loaded or model trained")

    monkeypatch.setattr(harness, "load_workspace", forbidden)
    monkeypatch.setattr(harness, "train_or_load", forbidden)


BAD = [
    (["--eps", "abc"], "--eps 'abc' is not a number"),
    (["--eps", "8/0"], "units of 1/255"),
    (["--eps", "8/128"], "units of 1/255"),
    (["--eps", "300"], "(0, 255]"),
    (["--eps", "-1"], "(0, 255]"),
    (["--eps", "0"], "(0, 255]"),
    (["--eps", ","], "at least one value"),
    (["--defense", "metric-at", "--defense-opt", "steps=abc"], "steps='abc' is not an integer"),
    (["--defense", "metric-at", "--defense-opt", "steps=2.5"], "not an integer"),
    (["--defense", "metric-at", "--defense-opt", "eps"], "is not key=value"),
    (["--defense", "ddid", "--defense-opt", "second_order=maybe"], "is not a boolean"),
    (["--defense", "ddid", "--defense-opt", "ablate=fnes+magic"], "valid parts: diffusion"),
    (["--attack", "fgsm", "--attack-opt", "fgsm:steps=x"], "steps='x' is not an integer"),
    (["--attack", "fgsm", "--attack-opt", "fgsm:norm=l3"], "norm=l3 is refused"),
    (["--attack", "fgsm", "--attack-opt", "fgsm:norm=l2"], "norm=l2 is refused"),
    (["--attack", "fgsm", "--attack-opt", "fgsm:eps=0.5,step=0.5"], "ε belongs to the run"),
    (["--attack", "sma", "--attack-opt", "sma:random_start=maybe"], "is not a boolean"),
    (["--attack", "fgsm", "--attack-opt", "nosuch:steps=3"], "unknown attack 'nosuch'"),
    (["--attack", "fgsm", "--attack-opt", "sma:steps=3"], "not in this run's attacks"),
    (["--attack", "fgsm", "--attack-opt", "steps=3"], "must be NAME:key=value"),
    (["--dataset-opt", "num_ids=abc"], "num_ids='abc' is not an integer"),
    (["--dataset-opt", "foo=1"], "has no option foo"),
    (["--data-root", "/tmp"], "drop --data-root"),
    (["--dataset", "market1501", "--data-root", "/no/such/dir"], "does not exist"),
    pytest.param(["--dataset", "market1501", "--data-root", str(MARKET), "--dataset-opt", "foo=1"], "has no option foo",
                 marks=pytest.mark.skipif(not MARKET.is_dir(), reason=f"needs the Market-1501 sample at {MARKET}")),
    (["--seed", "x"], "argument --seed"),
    (["--epochs", "0"], "must be at least 1"),
    (["--epochs", "x"], "argument --epochs"),
    (["--height", "5"], "between 16 and 1024"),
    (["--backbone-weights", "/no/such/file.pt"], "does not exist"),
    (["--defense", "nope"], "unknown defense 'nope'. Did you mean 'none'?"),
    (["--attack", "fnaa"], "Valid attacks:"),
    (["--backbone", "resnet5O"], "Did you mean 'resnet50'"),
    (["--defense", "none", "--defense-opt", "ablate=fnes"], "has no option ablate"),
    (["--defense", "ddid", "--defense-opt", "generator=/no/such/generator"], "is not a folder"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join((b.values if hasattr(b, "values") else b)[0])
                                                     for b in BAD])
def test_bad_input_is_one_line_before_any_work(args, message, no_work, capsys):
    start = time.perf_counter()
    try:
        code = main(["run", *args])
    except SystemExit as exc:  # argparse's own errors (e.g. --seed x) exit directly
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert time.perf_counter() - start < 15


def test_unsafe_pickle_weights_are_one_line(tmp_path, no_work, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"w": Evil()}, path)
    assert main(["run", "--backbone-weights", str(path), "--no-write"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unsafe pickle" in err and "weights_only" not in err and len(err.splitlines()) == 1


def test_eps_units_and_canonical_order():
    assert parse_eps("8") == (8.0,) and parse_eps("8/255") == (8.0,) and parse_eps("0.5/255") == (0.5,)
    with pytest.raises(BenchmarkError, match="did you mean --eps 127.5"):  # units of 1/255: 0.5 means 0.5/255
        parse_eps("0.5")
    assert parse_eps("16,2,8,4,8") == (2.0, 4.0, 8.0, 16.0)


def test_spellings_of_one_configuration_are_one_spec():
    a = make_spec(defense="ddid", defense_options={"ablate": "fnes+self-meta", "gamma": "3"})
    b = make_spec(defense="ddid", defense_options={"ablate": "self-meta+fnes", "gamma": "3.0"})
    c = make_spec(defense="ddid", defense_options={"ablate": "self-meta+fnes"})
    assert a == b == c and a.digest == b.digest
    assert a.defense.label == "ddid[ablate=fnes+self-meta]"
    assert make_spec(attacks="sma,fna").attacks == make_spec(attacks="fna,sma").attacks
    assert make_spec(defense="ddid", defense_options={"fnes.gamma": "3"}) == \
        make_spec(defense="ddid", defense_options={"gamma": "3"})


def test_official_and_custom_settings():
    assert make_spec(defense="ddid", attacks="all").official
    assert make_spec(defense="ddid", defense_options={"ablate": "fnes"}).official  # a labelled recipe
    cases = {"epochs": dict(epochs=2), "input": dict(height=64, width=32), "metric": dict(metric="cosine"),
             "data": dict(dataset_options={"num_ids": "40"}),
             "attack:fgsm": dict(attacks="fgsm", attack_options={"fgsm": {"steps": "3"}})}
    for key, kwargs in cases.items():
        spec = make_spec(**kwargs)
        assert not spec.official and key in spec.custom_settings(), key
    assert make_spec(epochs=2).settings == "epochs=2"
    assert make_spec(epochs=30).official  # the defense's own default is the standard


def test_default_epochs_follow_the_trained_recipe():
    assert make_spec(defense="jpeg").defense.epochs == 30  # trains like none
    ddid = make_spec(defense="ddid")
    assert ddid.defense.epochs == 10 and ddid.defense.parent.name == "none" and ddid.defense.parent.epochs == 30
    assert make_spec(defense="ddid", epochs=2).defense.parent.epochs == 30


def test_run_id_is_one_safe_folder_name(tmp_path):
    from tests.test_ddid_parts import tiny_generator

    generator = tiny_generator(tmp_path / ("very-long-" * 20) / ("folder-name-" * 18))
    spec = make_spec(defense="ddid", defense_options={"generator": str(generator)})
    rid = spec.run_id("20260101-000000")
    assert len(rid) < 200 and "/" not in rid and ".." not in rid


def test_plugin_names_that_escape_folders_are_refused():
    from benchmark.core.registry import Registry

    reg = Registry("backbone")
    with pytest.raises(ValueError, match="not allowed"):
        reg.register("x/../..")(object)


def test_help_shows_defaults_and_version(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 8)" in out and "(default: synthped)" in out and "--allow-dirty" in out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "reid-robustness-bench" in capsys.readouterr().out


def test_list_details_names_every_option(capsys):
    assert main(["list", "--details", "ddid"]) == 0
    out = capsys.readouterr().out
    for key in ("gamma", "delta2", "train_steps", "ablate", "lambda_e"):
        assert key in out
    assert main(["list", "--details", "query-bb"]) == 0
    assert "queries" in capsys.readouterr().out
    assert main(["list", "--details", "nope"]) == 2


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import benchmark.run.execute as harness

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(harness, "load_workspace", interrupted)
    assert main(["eval", "--defense", "none"]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted:") and len(err.splitlines()) == 1


@pytest.mark.parametrize("overrides", [
    {},
    {"defense": "ddid", "defense_options": {"ablate": "fnes+self-meta", "gamma": "3"}, "epochs": 2},
    {"defense": "jpeg", "attacks": "fna,sma,standard", "eps": "2,8", "check_convergence": True, "seed": 3},
    {"attacks": "query-bb", "attack_options": {"query-bb": {"queries": "50"}}, "metric": "cosine", "amp": "bf16"},
    {"defense": "metric-at", "split": "validation", "dataset_options": {"num_ids": "60"}, "train_processes": 2},
    {"seed": 2, "data_seed": 1},
])
def test_a_spec_reads_back_from_its_json_unchanged(overrides):
    import json

    from benchmark.run.spec import RunSpec, make_spec

    spec = make_spec(**overrides)
    again = RunSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec and again.digest == spec.digest and again.to_json() == spec.to_json()


def test_a_spec_json_from_another_version_is_refused():
    from benchmark.run.spec import RunSpec, make_spec

    record = make_spec().to_json()
    with pytest.raises(BenchmarkError, match="not its recorded"):
        RunSpec.from_json({**record, "digest": "0" * 16})
    with pytest.raises(BenchmarkError, match="incomplete or malformed"):
        RunSpec.from_json({k: v for k, v in record.items() if k != "defense"})


def test_the_data_seed_fixes_the_test_set_while_the_training_seed_varies():
    import json

    from benchmark.run.spec import RunSpec, make_spec
    from benchmark.run.workspace import load_workspace
    from tests.conftest import tiny_config

    # training seeds 0 and 1 score the same test set; another data seed is another data set, and custom
    digests = {(seed, data): load_workspace(tiny_config(seed=seed, data_seed=data)).digests
               for seed, data in ((0, 0), (1, 0), (0, 1))}
    assert digests[(0, 0)] == digests[(1, 0)]
    assert all(digests[(0, 1)][split] != digests[(0, 0)][split] for split in ("train", "query", "gallery"))
    assert make_spec(seed=2).official and make_spec(seed=2).data_seed == 0
    assert make_spec(data_seed=1).settings == "data-seed=1"
    assert make_spec(seed=2).row_key("clean", "0") != make_spec(seed=2, data_seed=1).row_key("clean", "0")
    # a record written before the data seed was its own drew the data with `seed`: it reads back so, same digest
    old = make_spec(seed=2, data_seed=2).to_json()
    assert "data_seed" not in old
    again = RunSpec.from_json(json.loads(json.dumps(old)))
    assert again.data_seed == 2 and again.digest == old["digest"]
    assert make_spec(seed=2).digest != again.digest
    with pytest.raises(BenchmarkError, match="--data-seed -1"):
        make_spec(data_seed=-1)
