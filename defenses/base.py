"""Defense interface and registry.

A defense trains a ReID model (`fit`) and may add a test-time input transform (`transform`). It
declares the attacks it trains with (`trains_with`, registry names) so the harness can tag every
result as seen or unseen. Third-party defenses register through the entry-point group
`reid_robustness_bench.defenses`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from benchmark.core.options import build_options
from benchmark.core.registry import EntryInfo, Registry
from benchmark.core.training import TrainConfig, TrainContext, standard_step, train_model
from benchmark.data import SplitTensors
from benchmark.models import ReidModel


@dataclass(frozen=True)
class AblationStep:
    """One row of a defense's ablation study (its paper's ablation table): a recipe, named by a registered defense
    and `key=value` options, and the label of the row it is judged against (None: the study's reference)."""

    label: str
    defense: str
    options: tuple[str, ...] = ()
    versus: str | None = None


@dataclass(frozen=True)
class AdaptiveForward:
    """One way white-box attacks differentiate through a test-time transform (see `defenses.adaptive`).

    A name, a builder of a differentiable g ≈ transform used for the backward pass (None:
    differentiate the transform itself), and the EOT samples of a randomised transform.
    """

    name: str
    surrogate: Callable[[], nn.Module] | None = None
    eot_samples: int = 1
    summary: str = ""


@dataclass(frozen=True)
class NoOptions:
    """A defense without options."""
    pass


class Defense:
    """Base class: the undefended training recipe (ID CE with label smoothing + batch-hard triplet)."""

    name: ClassVar[str] = ""
    trains_with: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type] = NoOptions
    #: reuse the checkpoint of another defense whose training is identical (e.g. "none")
    trains_like: ClassVar[str | None] = None
    #: default training epochs (the CLI's --epochs overrides)
    default_epochs: ClassVar[int] = 30
    #: start from the trained checkpoint of this defense (adversarial fine-tuning), or from scratch
    warm_start: ClassVar[str | None] = None
    #: the ablation study `sweep --ablation NAME` runs and `table` reports (empty: none)
    ablation: ClassVar[tuple[AblationStep, ...]] = ()
    #: options `sweep --tune NAME` may move, each with its candidate values as --defense-opt takes them
    search_space: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, **options: Any) -> None:
        self.options = build_options(self.Options, f"defense '{self.name}'", options)

    def config(self) -> dict[str, Any]:
        """Every option, defaults included: part of the checkpoint key."""
        return dataclasses.asdict(self.options)

    def seen_attacks(self) -> tuple[str, ...]:
        """Attacks this defense trains with (rows for them are tagged seen)."""
        return self.trains_with

    def train_step(self, model: ReidModel, x: torch.Tensor, y: torch.Tensor,
                   ctx: TrainContext) -> dict[str, float]:
        """One optimisation step on a batch; returns losses to log."""
        return standard_step(model, x, y, ctx)

    def training_extras(self, model: ReidModel, lr: float, device: torch.device) -> dict[str, Any]:
        """Objects a training step needs besides the model (e.g. a discriminator), put in `ctx.extra`."""
        return {}

    def throughput_variant(self) -> Defense:
        """The defense whose training step `throughput` times (DDID: phase 2 only, without generation)."""
        return self

    def fit(self, model: ReidModel, train: SplitTensors, cfg: TrainConfig,
            device: torch.device) -> dict[str, Any]:
        """Train `model` in place on the training split; return a JSON-able history."""
        return train_model(model, train, cfg, self.train_step, device, desc=self.name,
                           extra=self.training_extras(model, cfg.lr, device))

    def transform(self) -> nn.Module | None:
        """Test-time input transform (images in [0, 1] -> images in [0, 1]), or None."""
        return None

    def adaptive_forwards(self) -> tuple[AdaptiveForward, ...]:
        """How white-box attacks differentiate through `transform()`, strongest first.

        Empty (the default) means: the model's own gradients without a transform, the transform
        itself differentiated with one. A transform with a step that has no useful gradient (rounding,
        quantisation) must declare a smooth surrogate here, and a randomised one its EOT samples.
        """
        return ()

    def surrogate_choice(self) -> str:
        """Which declared adaptive forward attacks use: 'auto' (all, strongest first) or one by name."""
        return "auto"


class DefendedModel(nn.Module):
    """What attacks and the evaluator see: optional input transform, then the ReID model."""

    def __init__(self, model: ReidModel, transform: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.transform = transform

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            x = self.transform(x)
        return self.model.embed(x)

    #: draws each attack gradient averages; attacks normally see the model through an `AttackView`
    eot_samples = 1

    def attack_embed(self, x: torch.Tensor) -> torch.Tensor:
        """The transform differentiated as it is (an `AttackView` applies declared surrogates)."""
        return self.model.attack_embed(self.transform(x) if self.transform is not None else x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


@dataclass
class DefenseInfo(EntryInfo):
    """What `list defenses` and the harness know of a defense besides its class."""

    #: baseline, adversarial training, input transform, reference, ...
    kind: str = ""
    #: the attacks it trains with (its rows for them are tagged seen)
    trains_with: tuple[str, ...] = ()
    #: forward passes one embedding costs (EOT or ensembles: more), for the cost check of `validate`
    forward_passes: int = 1


DEFENSES: Registry[type[Defense]] = Registry(
    "defense", "reid_robustness_bench.defenses",
    builtin_modules=("defenses.none", "defenses.adv_train", "defenses.metric_at", "defenses.goat",
                     "defenses.transforms", "defenses.ddid"), info=DefenseInfo)


def register_defense(name: str, **meta: Any) -> Callable[[type[Defense]], type[Defense]]:
    """Class decorator: `@register_defense("my-defense", paper="...")`."""

    def decorator(cls: type[Defense]) -> type[Defense]:
        cls.name = name
        meta.setdefault("trains_with", cls.trains_with)
        meta.setdefault("summary", (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "")
        return DEFENSES.register(name, **meta)(cls)

    return decorator


def build_defense(name: str, **options: Any) -> Defense:
    """Instantiate a registered defense with typed options."""
    return DEFENSES.get(name)(**options)
