"""A model the benchmark did not train: the Python API and `--model` score it like `run` scores its own."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import benchmark
from benchmark.cli.main import main
from benchmark.core.errors import BenchmarkError
from tests.conftest import TINY_SYNTHPED, cpu_runtime, tiny_config
from tests.user_model import TRAIN_IDS, build

TINY = ",".join(f"{k}={v}" for k, v in TINY_SYNTHPED.items())


@pytest.fixture(scope="module")
def trained(tiny_ws):
    """The undefended reidnet-s trained and scored through the benchmark's own run path."""
    from benchmark.run.execute import execute

    return execute(tiny_config(defense="none", attacks="fgsm,sma", epochs=1), cpu_runtime(), workspace=tiny_ws)


@pytest.fixture(scope="module")
def weights(trained, tmp_path_factory):
    """The trained ReID model's weights, saved as a user would save their own model's state dict."""
    reid = trained.model.model
    assert reid.classifier.out_features == TRAIN_IDS
    path = tmp_path_factory.mktemp("user") / "user.safetensors"
    save_file({f"net.{k}": v.contiguous() for k, v in reid.state_dict().items()}, str(path))
    return path


def _user_model(weights) -> torch.nn.Module:
    from safetensors.torch import load_file

    model = build()
    model.load_state_dict(load_file(str(weights)))
    return model


def test_api_scores_a_user_module_exactly_as_run_scores_the_same_weights(trained, weights):
    result = benchmark.evaluate(_user_model(weights), dataset_options=TINY_SYNTHPED, input_size=(64, 32),
                                suite=None, attacks=["fgsm", "sma"], device="cpu")
    assert result.clean.mAP == trained.clean.mAP and result.clean.rank1 == trained.clean.rank1
    for r in trained.attacks:
        assert result.attacks[(r.attack, "8/255")].mAP == r.metrics.mAP
        torch.testing.assert_close(result.attacks[(r.attack, "8/255")].per_query_ap, r.metrics.per_query_ap,
                                   rtol=0, atol=0, equal_nan=True)
    assert not result.spec.official and f"model={result.spec.model.weights_sha256[:12]}" in result.spec.settings
    assert result.spec.model.weights_sha256 and result.provenance["torch_version"]
    assert list(result.per_query.columns[:4]) == ["query", "name", "pid", "camid"]
    low, high = result.interval(result.attacks[("sma", "8/255")])
    assert low < result.attacks[("sma", "8/255")].mAP < high
    low, high = result.interval(result.clean, "R1")
    assert low <= result.clean.rank1 <= high


def test_eval_model_from_the_command_line_writes_the_same_numbers(trained, weights, tmp_path):
    argv = ["run", "--model", "tests.user_model:build", "--weights", str(weights), "--attack", "fgsm,sma",
            "--dataset-opt", TINY, "--height", "64", "--width", "32", "--device", "cpu",
            "--results-dir", str(tmp_path / "results"), "--leaderboard-dir", str(tmp_path / "boards")]
    assert main(argv) == 0
    board = pd.read_csv(tmp_path / "boards" / "custom" / "synthped.csv")
    by_attack = board.set_index("attack")["mAP"]
    assert by_attack["clean"] == pytest.approx(trained.clean.mAP, abs=5e-5)  # boards keep 4 decimals
    for r in trained.attacks:
        assert by_attack[r.attack] == pytest.approx(r.metrics.mAP, abs=5e-5)
    assert board["settings"].str.contains("model=").all()
    assert (board["backbone"] == "tests.user_model:build").all()
    assert board["model_digest"].astype(str).str.fullmatch("[0-9a-f]{16}").all()


def test_a_run_names_the_model_it_measured_whether_trained_or_from_the_cache(trained, tiny_ws):
    from benchmark.models.external import content_hash
    from benchmark.run.execute import execute

    assert trained.train_info.model_digest == content_hash(trained.model.model)[:16]
    again = execute(tiny_config(defense="none", attacks="fgsm", epochs=1), cpu_runtime(), workspace=tiny_ws)
    assert again.train_info.cached and again.train_info.model_digest == trained.train_info.model_digest


def test_the_api_refuses_what_it_cannot_score(weights):
    model = _user_model(weights)
    with pytest.raises(BenchmarkError, match="trains a model of its own"):
        benchmark.evaluate(model, defense="metric-at", suite=None)
    with pytest.raises(BenchmarkError, match="in \\[0, 1\\] units"):
        benchmark.evaluate(model, eps=8, suite=None)
    with pytest.raises(BenchmarkError, match="nn.Module"):
        benchmark.evaluate(lambda x: x, suite=None)


@pytest.mark.parametrize("argv, message", [
    (["--model", "no_such_pkg.models:build"], "cannot import"),
    (["--model", "not a factory"], "PKG.MODULE:FUNCTION"),
    (["--model", "tests.user_model:nothing"], "has no function"),
    (["--weights", "x.pt"], "add --model"),
    (["--model", "tests.user_model:build", "--epochs", "3"], "does not apply to --model"),
])
def test_bad_model_arguments_fail_in_one_line(argv, message, capsys):
    assert main(["eval", *argv, "--dataset-opt", TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_model_whose_weights_do_not_fit_is_refused(tmp_path, capsys):
    path = tmp_path / "bad.pt"
    torch.save({"other.weight": torch.zeros(3)}, path)
    assert main(["eval", "--model", "tests.user_model:build", "--weights", str(path), "--dataset-opt", TINY]) == 2
    assert "does not fit the model" in capsys.readouterr().err


def test_models_that_compute_differently_never_share_a_key():
    """Same weights, another parameter-free step (an input transform) or another forward: another content hash, so
    neither reads the other's cached attacks."""
    from benchmark.models.external import content_hash

    class Rounded(torch.nn.Module):
        def forward(self, x):
            return torch.round(x * 255) / 255

    class Doubled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(4, 2))
    rounded = torch.nn.Sequential(Rounded(), plain[0])
    doubled = torch.nn.Sequential(Doubled(4, 2))
    doubled[0].load_state_dict(plain[0].state_dict())
    assert len({content_hash(plain), content_hash(rounded), content_hash(doubled)}) == 3
    assert content_hash(plain) == content_hash(torch.nn.Sequential(plain[0]))
