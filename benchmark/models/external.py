"""Models the benchmark did not train: any `nn.Module` mapping images in [0, 1] to embeddings.

A user's module enters a run by its content (a digest of its parameters and buffers), which names
its rows and keys its cached attack cells. From the command line it is named as a factory,
`PKG.MODULE:FUNCTION` (called with no arguments), with an optional local weights file; from
Python it is the module object itself. Normalisation belongs inside the module. A module may
declare an adaptive forward for white-box attacks with an `attack_embed(x)` method (a smooth
stand-in for a step with no useful gradient); the evaluator always scores its `forward`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import re
import sys
from pathlib import Path

import torch
from torch import nn

from benchmark.core.errors import BenchmarkError
from benchmark.core.hashing import source_digest, tensor_digest
from benchmark.models.backbones import read_state

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class ExternalModel(nn.Module):
    """A user's embedding model as the harness sees it: `embed(x)` is the module's forward."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings of images in [0, 1] (B x D)."""
        out = self.module(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise BenchmarkError(f"the model must map a batch of B images to a B x D tensor of embeddings; it "
                                 f"returned {shape} for {x.shape[0]} images")
        return out

    #: draws each attack gradient averages (a user model is taken as deterministic)
    eot_samples = 1

    def attack_embed(self, x: torch.Tensor) -> torch.Tensor:
        """What white-box attacks differentiate: the module's declared `attack_embed`, else its forward."""
        hook = getattr(self.module, "attack_embed", None)
        return hook(x) if callable(hook) else self.embed(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def non_finite(self) -> list[str]:
        """Names of parameters and buffers holding NaN or infinity."""
        return [n for n, t in (*self.named_parameters(), *self.named_buffers())
                if t.is_floating_point() and not torch.isfinite(t).all()]


def content_hash(module: nn.Module) -> str:
    """sha256 of what a module computes: its tree (every submodule's name and class), the code those classes are
    defined in, and its parameters and buffers (names, dtypes, shapes, bytes).

    Weights alone would not do: two models with the same weights and another forward, or another
    parameter-free step such as an input transform, would share a key and each other's cached attacks.
    """
    cls = type(module)
    tree = [(name, f"{type(m).__module__}.{type(m).__qualname__}") for name, m in module.named_modules()]
    classes = {type(m) for _, m in module.named_modules()}
    # the user's own code by its content; an installed library's classes (torch.nn, timm) by its version
    libraries = sorted({_installed(c) for c in classes} - {""})
    code = [source_digest(*(c for c in classes if not _installed(c))), libraries]
    state = {k: v for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}
    weights = tensor_digest({f"{cls.__module__}.{cls.__qualname__}/{k}": v for k, v in state.items()})
    return hashlib.sha256(json.dumps({"tree": tree, "code": code, "weights": weights}).encode()).hexdigest()


def _installed(cls: type) -> str:
    """`name==version` when `cls` comes from an installed distribution (site-packages), else ''."""
    module = sys.modules.get(cls.__module__)
    path = str(getattr(module, "__file__", "") or "")
    if "site-packages" not in path and "dist-packages" not in path:
        return ""
    top = cls.__module__.split(".")[0]
    try:
        return f"{top}=={importlib.metadata.version(top)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{top}==?"


def load_factory(factory: str, weights: str | Path | None = None) -> nn.Module:
    """Call `PKG.MODULE:FUNCTION` and load an optional local weights file into the module it returns."""
    if not _FACTORY.match(factory):
        raise BenchmarkError(f"--model {factory!r}: write PKG.MODULE:FUNCTION, e.g. --model mypkg.models:build "
                             "(a function with no arguments that returns an nn.Module)")
    module_name, _, func_name = factory.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BenchmarkError(f"--model {factory}: cannot import '{module_name}' ({exc}); install it or put its "
                             "folder on PYTHONPATH") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise BenchmarkError(f"--model {factory}: '{module_name}' has no function '{func_name}'")
    model = func()
    if not isinstance(model, nn.Module):
        raise BenchmarkError(f"--model {factory}: the factory returned {type(model).__name__}, not an nn.Module")
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise BenchmarkError(f"--weights '{weights}' does not exist; pass a local .pt/.pth or .safetensors "
                                 "state dict of the model")
        state = read_state(path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise BenchmarkError(f"--weights '{weights}' does not fit the model of {factory}: "
                                 f"{len(missing)} missing and {len(unexpected)} unexpected keys "
                                 f"(first: {(list(missing) + list(unexpected))[0]})")
    return model.eval()
