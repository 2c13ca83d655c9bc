"""Every registry's entries keep the same contract (timm's test_models.py idea): plug-ins included."""

from __future__ import annotations

import pytest
import torch

from attacks import ATTACKS
from attacks.suites import SUITES
from benchmark.cli.launchers import LAUNCHERS
from benchmark.core.options import bounds_of, build_options, option_paths, option_table
from benchmark.core.registry import _VALID_NAME, Registry
from benchmark.data import DATASETS
from benchmark.models import BACKBONES, build_backbone
from defenses import DEFENSES

REGISTRIES: dict[str, Registry] = {"data set": DATASETS, "backbone": BACKBONES, "attack": ATTACKS,
                                   "defense": DEFENSES, "suite": SUITES, "launcher": LAUNCHERS}


@pytest.mark.parametrize("kind, name", [(k, n) for k, r in REGISTRIES.items() for n in r.names()])
def test_every_entry_has_a_valid_name_and_typed_metadata(kind, name):
    registry = REGISTRIES[kind]
    meta = registry.meta(name)
    assert _VALID_NAME.fullmatch(name), f"{kind} '{name}' has a name that cannot name a folder or a row"
    assert isinstance(meta, registry.info), f"{kind} '{name}' metadata is not a {registry.info.__name__}"
    assert meta.dist, f"{kind} '{name}' does not say which distribution registered it"
    assert meta.summary or getattr(meta, "layout", "") or meta.note, f"{kind} '{name}' has nothing for `list`"


@pytest.mark.parametrize("name", DATASETS.names())
def test_data_set_options_build_with_their_defaults(name):
    meta = DATASETS.meta(name)
    if meta.options is not None:
        build_options(meta.options, f"data set '{name}'", {})


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_gives_the_feature_map_it_declares(name):
    module, dim = build_backbone(name)
    with torch.no_grad():
        out = module.eval()(torch.rand(2, 3, 64, 32))
    assert out.dim() == 4 and out.shape[:2] == (2, dim)


@pytest.mark.parametrize("name", SUITES.names())
def test_suite_members_are_registered_attacks_with_valid_options(name):
    suite = SUITES.get(name)
    assert suite.name == name and suite.members and 0 <= suite.floor < 1
    for member in suite.members:
        cls = ATTACKS.get(member.attack)
        build_options(cls.Options, f"suite '{name}' member '{member.attack}'", dict(member.options))


@pytest.mark.parametrize("name", LAUNCHERS.names())
def test_launcher_builds_with_its_defaults(name, tmp_path):
    launcher = LAUNCHERS.get(name)(tmp_path)
    assert launcher.processes_per_cell >= 1


@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_declares_its_hooks(name):
    defense = DEFENSES.get(name)()
    assert isinstance(defense.adaptive_forwards(), tuple)
    assert isinstance(defense.surrogate_choice(), str)
    assert set(defense.seen_attacks()) <= set(ATTACKS.names()), f"'{name}' trains with unregistered attacks"


def test_metadata_keys_are_checked_at_registration():
    registry = Registry("thing")
    with pytest.raises(ValueError, match="unknown metadata colour"):
        registry.register("x", colour="red")(object)
    with pytest.raises(ValueError, match="is not allowed"):
        registry.register("x\n")(object)


def _options_of(kind: str, name: str) -> type | None:
    if kind == "data set":
        return DATASETS.meta(name).options
    return (ATTACKS if kind == "attack" else DEFENSES).get(name).Options


@pytest.mark.parametrize("kind, name", [(k, n) for k, r in (("data set", DATASETS), ("attack", ATTACKS),
                                                              ("defense", DEFENSES)) for n in r.names()])
def test_every_number_option_declares_the_values_it_accepts(kind, name):
    cls = _options_of(kind, name)
    if cls is None:
        return
    for key, type_name, default, accepts in option_table(cls):
        numbers = type_name in ("int", "float") or (type_name == "tuple" and default
                                                    and isinstance(default[0], (int, float)))
        if numbers:
            assert accepts != "any", f"{kind} '{name}': option {key} declares no bounds (benchmark.core.options.option)"
            assert bounds_of(cls, option_paths(cls)[key]).admits(default), f"{name}: {key} default out of bounds"
