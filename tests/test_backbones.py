"""Backbones from the ecosystem: any timm model by name, weights from a local file only."""

from __future__ import annotations

import pytest
import torch

from benchmark.cli.main import main
from benchmark.core.errors import BenchmarkError
from benchmark.models import BACKBONES, build_backbone
from tests.conftest import cpu_runtime, tiny_config

timm = pytest.importorskip("timm")


def test_a_timm_backbone_runs_end_to_end(tiny_ws):
    from benchmark.run.execute import execute

    outcome = execute(tiny_config(backbone="timm:test_resnet", attacks="fgsm", epochs=1), cpu_runtime(),
                      workspace=tiny_ws)
    assert 0 < outcome.clean.mAP <= 100 and outcome.attacks[0].metrics.num_queries == outcome.clean.num_queries
    assert outcome.spec.model.backbone == "timm:test_resnet"
    assert BACKBONES.meta("timm:test_resnet").version == f"timm {timm.__version__}"


def test_timm_weights_load_from_a_local_file_with_their_head(tmp_path):
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    path = tmp_path / "test_resnet.pt"
    torch.save(net.state_dict(), path)  # a full timm state dict: the classifier head is dropped on load
    module, dim = build_backbone("timm:test_resnet", path)
    assert dim == net.num_features
    loaded = {k.removeprefix("net."): v for k, v in module.state_dict().items()}
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in loaded.items())
    assert module(torch.rand(2, 3, 64, 32)).dim() == 4


def test_a_vision_transformer_gives_a_feature_map():
    module, dim = build_backbone("timm:test_vit")
    out = module(torch.rand(2, 3, 160, 160))
    assert out.dim() == 4 and out.shape[1] == dim


@pytest.mark.parametrize("name, message", [("timm:no_such_net", "timm has no model"), ("timm:", "timm:NAME")])
def test_unknown_timm_models_fail_in_one_line(name, message, capsys):
    with pytest.raises((BenchmarkError, KeyError), match=message):
        BACKBONES.entry(name)
    assert main(["eval", "--backbone", name]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
