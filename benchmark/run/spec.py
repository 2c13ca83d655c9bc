"""The run specification: one typed, frozen, hashable record of everything that changes a number.

Built once from the command line (or from keyword arguments in tests), validated in full before
any data is generated or model trained, canonicalised (sorted lists, typed numbers, only
non-default options kept), and the single source of the checkpoint key, the leaderboard row key
and label, the run id and the run's `config.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attacks import ATTACKS
from benchmark.core.enums import Norm
from benchmark.core.errors import BenchmarkError
from benchmark.core.hashing import fingerprint, sha256_file
from benchmark.core.options import build_options, changed_options, format_value, parse_kv
from benchmark.core.precision import AMP_MODES
from benchmark.core.protocol import METRICS, STANDARD_INPUT, STANDARD_METRIC
from benchmark.data import DATASETS
from benchmark.models import BACKBONES, build_backbone
from defenses import DEFENSES

#: what a run scores: the test identities, or validation identities held out of the training split (tuning)
SPLITS = ("test", "validation")
MAX_SEED = 2**32 - 1  # what every random generator the benchmark seeds accepts
MAX_LABEL = 80  # longer labels are shortened (with a hash) in folder names
Options = tuple[tuple[str, Any], ...]


def _items(options: Any) -> Options:
    return tuple(changed_options(options).items())


def _label(name: str, options: Options) -> str:
    if not options:
        return name
    return f"{name}[{','.join(f'{k}={format_value(k, v)}' for k, v in options)}]"


@dataclass(frozen=True)
class DataSpec:
    """A data set: registry name, root folder (absolute; None for generated ones) and non-default options."""

    name: str
    root: str | None = None
    options: Options = ()

    @property
    def label(self) -> str:
        """Canonical label: the name plus its non-default options."""
        return _label(self.name, self.options)

    def options_object(self) -> Any:
        """The typed options object of the data set."""
        return build_options(DATASETS.meta(self.name).options or _NoOptions, f"data set '{self.name}'",
                             dict(self.options))


@dataclass(frozen=True)
class _NoOptions:
    pass


@dataclass(frozen=True)
class ModelSpec:
    """Backbone, input size and the content hash of user-supplied weights.

    A model the benchmark trains is a registered backbone (`source` empty). An external model, one
    the benchmark did not train, has a `source` (`factory:PKG.MODULE:FUNCTION` from the command
    line, `module:CLASS` from the Python API) and `weights_sha256` is the digest of its parameters
    and buffers (`benchmark.models.external.content_hash`).
    """

    backbone: str
    height: int = STANDARD_INPUT[0]
    width: int = STANDARD_INPUT[1]
    weights_sha256: str | None = None
    weights_path: str | None = field(default=None, compare=False)  # provenance only; the hash is the identity
    source: str = ""

    @property
    def external(self) -> bool:
        """True for a model the benchmark did not train."""
        return bool(self.source)

    @property
    def factory(self) -> str | None:
        """`PKG.MODULE:FUNCTION` of an external model named on the command line, else None."""
        return self.source.removeprefix("factory:") if self.source.startswith("factory:") else None

    def identity(self) -> dict[str, Any]:
        """JSON-able identity (what the hash covers)."""
        return {"backbone": self.backbone, "height": self.height, "width": self.width,
                "weights_sha256": self.weights_sha256, **({"source": self.source} if self.source else {})}


@dataclass(frozen=True)
class DefenseSpec:
    """A training recipe: defense name, non-default options, epochs and the recipe it warm-starts from."""

    name: str
    options: Options = ()
    epochs: int = 0
    parent: DefenseSpec | None = None

    @property
    def label(self) -> str:
        """Canonical label: the name plus its non-default options."""
        return _label(self.name, self.options)

    def build(self) -> Any:
        """The defense object of this recipe."""
        from defenses import build_defense

        return build_defense(self.name, **dict(self.options))

    def identity(self) -> dict[str, Any]:
        """JSON-able identity (what the hash covers)."""
        return {"name": self.name, "options": [[k, format_value(k, v)] for k, v in self.options],
                "epochs": self.epochs, "parent": self.parent.identity() if self.parent else None}


@dataclass(frozen=True)
class AttackSpec:
    """An attack of the run with its non-default options (ε and norm belong to the run, not the attack)."""

    name: str
    options: Options = ()

    @property
    def label(self) -> str:
        """Canonical label: the name plus its non-default options."""
        return _label(self.name, self.options)


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's numbers."""

    data: DataSpec
    model: ModelSpec
    defense: DefenseSpec
    attacks: tuple[AttackSpec, ...] = ()
    eps_units: tuple[float, ...] = (8.0,)   # epsilons in units of 1/255, sorted
    seed: int = 0                           # training and attacks; the data set is drawn by `data_seed`
    metric: str = STANDARD_METRIC
    train_data: DataSpec | None = None      # cross-domain training set; None = the test set's training split
    norm: str = Norm.LINF.value
    suite: str | None = None                # versioned attack suite (standard-v3), run after the attacks
    check_convergence: bool = False         # rerun the suite's iterative members with doubled iterations
    train_processes: int = 1                # data-parallel processes the checkpoint is trained with (torchrun)
    amp: str = "off"                        # mixed precision of training and feature extraction (attacks: float32)
    split: str = "test"                     # test, or validation: identities carved from the training split
    data_seed: int = 0                      # draws the data set (synthped's images, a split's identities): fixed

    @property
    def eps(self) -> tuple[float, ...]:
        """Epsilons in [0, 1] units."""
        return tuple(u / 255 for u in self.eps_units)

    @property
    def training_data(self) -> DataSpec:
        """The data set the model trains on."""
        return self.train_data or self.data

    def attack(self, name: str) -> AttackSpec:
        """The spec of an attack of this run."""
        return next(a for a in self.attacks if a.name == name)

    def custom_settings(self) -> dict[str, str]:
        """Settings that differ from the protocol's standard ones; empty for an official run."""
        out: dict[str, str] = {}
        default_epochs = DEFENSES.get(_trained_as(self.defense.name)).default_epochs
        if self.model.external:  # a model the benchmark did not train: named by its content
            out["model"] = str(self.model.weights_sha256)[:12]
        elif self.defense.epochs != default_epochs:
            out["epochs"] = str(self.defense.epochs)
        if (self.model.height, self.model.width) != STANDARD_INPUT:
            out["input"] = f"{self.model.height}x{self.model.width}"
        if self.metric != STANDARD_METRIC:
            out["metric"] = self.metric
        if self.model.weights_sha256 and not self.model.external:
            out["weights"] = self.model.weights_sha256[:12]
        for prefix, data in (("data", self.data), ("train-data", self.train_data)):
            if data is not None and data.options:
                out[prefix] = data.label
        for a in self.attacks:
            if a.options:
                out[f"attack:{a.name}"] = a.label
        # another batch split (per-rank BatchNorm, triplet mining) or precision gives another model
        if self.train_processes != 1:
            out["train-processes"] = str(self.train_processes)
        if self.amp != "off":
            out["amp"] = self.amp
        # tuning runs score held-out training identities: they never land on an official board
        if self.split != "test":
            out["split"] = self.split
        # the protocol's test set is the one data seed 0 draws; training seeds vary on it
        if self.data_seed != 0:
            out["data-seed"] = str(self.data_seed)
        return dict(sorted(out.items()))

    @property
    def settings(self) -> str:
        """Canonical text of the custom settings ('' for official runs): part of every row key."""
        return ";".join(f"{k}={v}" for k, v in self.custom_settings().items())

    @property
    def official(self) -> bool:
        """True when the run uses the protocol's standard settings."""
        return not self.custom_settings()

    def identity(self) -> dict[str, Any]:
        """JSON-able identity (what the hash covers)."""
        return {"data": dataclasses.asdict(self.data), "train_data": dataclasses.asdict(self.train_data)
                if self.train_data else None, "model": self.model.identity(), "defense": self.defense.identity(),
                "attacks": [[a.name, [[k, format_value(k, v)] for k, v in a.options]] for a in self.attacks],
                "eps_units": list(self.eps_units), "seed": self.seed, "metric": self.metric, "norm": self.norm,
                "suite": self.suite, "check_convergence": self.check_convergence,
                # only when set, so the digests of runs made before these existed stay what they were
                **({"train_processes": self.train_processes} if self.train_processes != 1 else {}),
                **({"amp": self.amp} if self.amp != "off" else {}),
                **({"split": self.split} if self.split != "test" else {}),
                # runs made before the data seed was its own drew the data with `seed`: their digests stay
                **({"data_seed": self.data_seed} if self.data_seed != self.seed else {})}

    @property
    def digest(self) -> str:
        """Hash of the identity."""
        return fingerprint(self.identity())

    def row_key(self, attack: str, eps_label: str) -> dict[str, Any]:
        """The leaderboard row key of one (attack, ε) cell of this run."""
        return {"dataset": self.data.name, "train_dataset": self.training_data.name,
                "defense": self.defense.label, "backbone": self.model.backbone, "attack": attack,
                "eps": eps_label, "seed": self.seed, "settings": self.settings}

    def run_id(self, stamp: str) -> str:
        """`<stamp>-<dataset>-<defense label>-<backbone>-s<seed>-<hash>`, safe as one folder name."""
        label = safe_name(self.defense.label)
        if len(label) > MAX_LABEL:
            label = f"{label[:MAX_LABEL]}-{fingerprint(self.defense.label, 6)}"
        return (f"{stamp}-{safe_name(self.data.name)}-{label}-{safe_name(self.model.backbone)}-s{self.seed}-"
                f"{self.digest[:6]}")

    def to_json(self) -> dict[str, Any]:
        """The specification as written to config.json and a sweep cell (`from_json` reads it back)."""
        return {**self.identity(), "settings": self.settings, "official": self.official,
                "defense_label": self.defense.label, "weights_path": self.model.weights_path,
                "digest": self.digest}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> RunSpec:
        """The specification `to_json` wrote; every option is re-validated and the digest must match."""
        try:
            model = dict(record["model"])
            spec = cls(
                data=_data_from_json(record["data"]),
                train_data=_data_from_json(record["train_data"]) if record.get("train_data") else None,
                model=ModelSpec(model["backbone"], int(model["height"]), int(model["width"]),
                                model.get("weights_sha256"), record.get("weights_path"), model.get("source", "")),
                defense=_defense_from_json(record["defense"]),
                attacks=tuple(AttackSpec(name, _items(build_options(ATTACKS.get(name).Options, f"attack '{name}'",
                                                                    dict(opts))))
                              for name, opts in record["attacks"]),
                eps_units=tuple(float(e) for e in record["eps_units"]), seed=int(record["seed"]),
                metric=record["metric"], norm=record["norm"], suite=record.get("suite"),
                check_convergence=bool(record.get("check_convergence", False)),
                train_processes=int(record.get("train_processes", 1)), amp=record.get("amp", "off"),
                split=record.get("split", "test"), data_seed=recorded_data_seed(record))
        except (KeyError, TypeError, ValueError) as exc:
            raise BenchmarkError(f"run specification JSON is incomplete or malformed ({type(exc).__name__}: {exc}); "
                                 "write it with RunSpec.to_json") from None
        if "digest" in record and spec.digest != record["digest"]:
            raise BenchmarkError(f"run specification JSON reads back as digest {spec.digest}, not its recorded "
                                 f"{record['digest']}: it was written by another version of the benchmark")
        return spec


def recorded_data_seed(record: Mapping[str, Any]) -> int:
    """The data seed of a specification's JSON: written when it differs from the training seed; a record made before
    `--data-seed` has none, and its training seed drew the data."""
    return int(record.get("data_seed", record["seed"]))


def _data_from_json(record: Mapping[str, Any]) -> DataSpec:
    name = record["name"]
    opts = build_options(DATASETS.meta(name).options or _NoOptions, f"data set '{name}'",
                         dict(record.get("options") or ()))
    return DataSpec(name, record.get("root"), _items(opts))


def _defense_from_json(record: Mapping[str, Any]) -> DefenseSpec:
    name = record["name"]
    opts = build_options(DEFENSES.get(name).Options, f"defense '{name}'", dict(record.get("options") or ()))
    parent = _defense_from_json(record["parent"]) if record.get("parent") else None
    return DefenseSpec(name, _items(opts), int(record["epochs"]), parent)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """Folder-name-safe text: anything but letters, digits, '.', '_' and '-' becomes '-'; no '..' or leading '.'."""
    out = _UNSAFE.sub("-", text).strip("-.")
    out = re.sub(r"\.{2,}", "-", out)
    return out or "x"


def _trained_as(defense: str) -> str:
    return DEFENSES.get(defense).trains_like or defense


# -- construction from user input --------------------------------------------------------------

def parse_eps(text: str | float | tuple | list) -> tuple[float, ...]:
    """'2,4,8,16', '8/255', '0.5/255' -> epsilons in units of 1/255 (sorted, unique); 0 < ε ≤ 255."""
    parts = list(text) if isinstance(text, (tuple, list)) else str(text).split(",")
    out: set[float] = set()
    for raw in (str(p).strip() for p in parts):
        if not raw:
            continue
        num = raw
        if "/" in raw:
            num, den = (s.strip() for s in raw.split("/", 1))
            if den != "255":
                raise BenchmarkError(f"--eps {raw}: write ε in units of 1/255, e.g. --eps 8 or --eps 8/255 "
                                     "(other denominators are refused)")
        try:
            value = float(num)
        except ValueError:
            raise BenchmarkError(f"--eps {raw!r} is not a number; write ε in units of 1/255, e.g. --eps 8 "
                                 "or --eps 2,4,8,16") from None
        if not math.isfinite(value) or value <= 0 or value > 255:
            raise BenchmarkError(f"--eps {raw}: ε must be in (0, 255] units of 1/255, e.g. --eps 8")
        if value < 1 and "/" not in raw:
            raise BenchmarkError(f"--eps {raw} is in units of 1/255, i.e. {raw}/255 (under one grey level); did you "
                                 f"mean --eps {value * 255:.4g} ({value:g} in [0, 1] units)? To attack below one grey "
                                 f"level, write it as a fraction: --eps {raw}/255")
        if round(value, 6) <= 0:
            raise BenchmarkError(f"--eps {raw}: ε rounds to 0; give at least 0.000001/255")
        out.add(round(value, 6))
    if not out:
        raise BenchmarkError("--eps needs at least one value in units of 1/255, e.g. --eps 8 or --eps 2,4,8,16")
    return tuple(sorted(out))


def _data_spec(name: str, root: str | None, options: Mapping[str, str], flag: str) -> DataSpec:
    entry = DATASETS.entry(name)
    needs_root = entry.meta.needs_root
    if not needs_root and root is not None:
        raise BenchmarkError(f"data set '{name}' is generated, not read from a folder: drop {flag} (change it "
                             f"with --dataset-opt, e.g. num_ids=400)")
    if needs_root:
        if root is None:
            raise BenchmarkError(f"data set '{name}' needs {flag} pointing at its folder")
        if not Path(root).is_dir():
            raise BenchmarkError(f"{flag} '{root}' does not exist or is not a folder; pass the folder that "
                                 f"holds the '{name}' data")
        root = str(Path(root).resolve())
    opts = build_options(entry.meta.options or _NoOptions, f"data set '{name}'", dict(options))
    return DataSpec(name, root, _items(opts))


def split_attacks(text: str) -> tuple[list[str], str | None]:
    """(attack names, suite) of an --attack value: 'all' = every attack outside suites plus the default suite."""
    from attacks.suites import DEFAULT_SUITE, SUITES

    aliases = {SUITES.meta(name).alias: name for name in SUITES.names() if SUITES.meta(name).alias}
    parts = [p.strip() for p in str(text).split(",") if p.strip() and p.strip() != "none"]
    suites = {aliases.get(p, p) for p in parts if p in aliases or p in SUITES}
    if len(suites) > 1:
        raise BenchmarkError(f"--attack names {len(suites)} suites ({', '.join(sorted(suites))}); a run takes one")
    suite = next(iter(suites), None)
    rest = [p for p in parts if p not in aliases and p not in SUITES]
    if "all" in rest:
        suite = suite or DEFAULT_SUITE
    outside = [n for n in ATTACKS.names() if not ATTACKS.meta(n).in_all]
    names = ATTACKS.resolve(",".join(rest), exclude=outside) if rest else []
    return names, suite


def _attack_specs(names: list[str], options: Mapping[str, Mapping[str, str]]) -> tuple[AttackSpec, ...]:
    for name in options:
        ATTACKS.entry(name)  # unknown name: one line listing the valid ones
        if name not in names:
            raise BenchmarkError(f"--attack-opt for '{name}', which is not in this run's attacks "
                                 f"({', '.join(names) or 'none'}); add it to --attack or drop the option")
    specs = []
    for name in sorted(names):
        raw = dict(options.get(name, {}))
        if "eps" in raw:
            raise BenchmarkError(f"--attack-opt {name}:eps is refused: ε belongs to the run, set it with --eps "
                                 "(units of 1/255)")
        if "norm" in raw and raw["norm"] != Norm.LINF.value:
            raise BenchmarkError(f"--attack-opt {name}:norm={raw['norm']} is refused: the protocol's threat model "
                                 "is L-inf (norm=linf)")
        cls = ATTACKS.get(name)
        opts = build_options(cls.Options, f"attack '{name}'", raw)
        specs.append(AttackSpec(name, _items(opts)))
    return tuple(specs)


def _defense_spec(name: str, options: Mapping[str, str], epochs: int | None) -> DefenseSpec:
    cls = DEFENSES.get(name)
    opts = build_options(cls.Options, f"defense '{name}'", dict(options))
    cls(**dict(_items(opts)))  # the defense's own checks (e.g. DDID's part names) run now, before any work
    trained = DEFENSES.get(_trained_as(name))
    if epochs is not None and epochs < 1:
        raise BenchmarkError(f"--epochs {epochs}: give at least 1 epoch")
    parent = _defense_spec(trained.warm_start, {}, None) if trained.warm_start else None
    return DefenseSpec(name, _items(opts), epochs if epochs is not None else trained.default_epochs, parent)


def defense_label(defense: str, options: tuple[str, ...] | list[str] = ()) -> str:
    """The canonical label of a defense recipe ('name[opt=value,...]', defaults left out): how its rows are keyed.

    `options` are --defense-opt strings (key=value). The label depends on today's defaults: a recipe
    that sets an option to its new default loses that option from its label.
    """
    return _defense_spec(defense, parse_kv(list(options), "--defense-opt"), None).label


def _weights(path: str | None, backbone: str) -> tuple[str | None, str | None]:
    if path is None:
        return None, None
    p = Path(path)
    if not p.is_file():
        raise BenchmarkError(f"backbone weights file '{path}' does not exist; pass a local .pt/.pth or "
                             ".safetensors file with --backbone-weights")
    stat = p.stat()
    return _checked_weights(str(p.resolve()), stat.st_size, stat.st_mtime_ns, backbone)


@functools.lru_cache(maxsize=16)
def _checked_weights(path: str, size: int, mtime_ns: int, backbone: str) -> tuple[str, str]:
    """Load (unreadable, unsafe or mismatched weights fail now, before any work) and hash a weights file once
    per content version (size and mtime key the cache: one check for every seed of a run)."""
    build_backbone(backbone, path)
    return path, sha256_file(path)


def make_spec(defense: str = "none", attacks: str = "none", dataset: str = "synthped",
              data_root: str | None = None, train_dataset: str | None = None, train_data_root: str | None = None,
              backbone: str = "reidnet-s", backbone_weights: str | None = None, eps: Any = "8", seed: int = 0,
              epochs: int | None = None, height: int = STANDARD_INPUT[0], width: int = STANDARD_INPUT[1],
              metric: str = STANDARD_METRIC, dataset_options: Mapping[str, str] | None = None,
              train_dataset_options: Mapping[str, str] | None = None,
              defense_options: Mapping[str, str] | None = None,
              attack_options: Mapping[str, Mapping[str, str]] | None = None,
              check_convergence: bool = False, train_processes: int = 1, amp: str = "off",
              split: str = "test", external: ModelSpec | None = None, data_seed: int = 0) -> RunSpec:
    """Validate every value and build the canonical RunSpec; raises BenchmarkError (one line) on bad input.

    `external` is the ModelSpec of a model the benchmark did not train (`external_model_spec`); the
    run then scores it as it is, behind the defense's test-time transform (none, or an input
    transform), and `backbone`, `backbone_weights` and `epochs` do not apply.
    """
    if split not in SPLITS:
        raise BenchmarkError(f"--split {split!r}: use test (the protocol) or validation (held-out training "
                             "identities, for tuning)")
    if not isinstance(train_processes, int) or train_processes < 1:
        raise BenchmarkError(f"--train-processes {train_processes}: give a positive integer (the torchrun "
                             "--nproc-per-node the checkpoint is trained with)")
    if amp not in AMP_MODES:
        raise BenchmarkError(f"--amp {amp!r}: use one of {', '.join(AMP_MODES)} (fp16 would need loss scaling "
                             "inside every defense's own backward passes)")
    defense_options = dict(defense_options or {})
    data = _data_spec(dataset, data_root, dataset_options or {}, "--data-root")
    train = None
    if train_dataset and (train_dataset != dataset or train_data_root):
        train = _data_spec(train_dataset, train_data_root, train_dataset_options or {}, "--train-data-root")
    if external is not None:
        _check_external(defense, epochs, backbone_weights, train_dataset)
    else:
        BACKBONES.entry(backbone)
    if metric not in METRICS:
        raise BenchmarkError(f"--metric {metric!r}: use one of {', '.join(METRICS)}")
    for side, value in (("--height", height), ("--width", width)):
        if not isinstance(value, int) or value < 16 or value > 1024:
            raise BenchmarkError(f"{side} {value}: give an integer between 16 and 1024 pixels")
    for flag, value in (("--seed", seed), ("--data-seed", data_seed)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
            raise BenchmarkError(f"{flag} {value}: give an integer between 0 and {MAX_SEED}")
    if external is None:
        weights_path, weights_sha = _weights(backbone_weights, backbone)
        model = ModelSpec(backbone, height, width, weights_sha, weights_path)
    else:
        model = dataclasses.replace(external, height=height, width=width)
    names, suite = split_attacks(attacks)
    if check_convergence and suite is None:
        raise BenchmarkError("--check-convergence reruns the standard suite: add 'standard' (or 'all') to --attack")
    return RunSpec(
        data=data, train_data=train,
        model=model, defense=_defense_spec(defense, defense_options, epochs),
        attacks=_attack_specs(names, attack_options or {}), eps_units=parse_eps(eps), seed=seed, metric=metric,
        suite=suite, check_convergence=check_convergence, train_processes=train_processes, amp=amp, split=split,
        data_seed=data_seed)


def _check_external(defense: str, epochs: int | None, backbone_weights: str | None, train_dataset: str | None) -> None:
    cls = DEFENSES.get(defense)
    if defense != "none" and not cls.trains_like:
        raise BenchmarkError(f"--model scores a trained model as it is: defense '{defense}' trains a model of its "
                             "own; use --defense none or an input transform (see `list defenses`)")
    for flag, value in (("--epochs", epochs), ("--backbone-weights", backbone_weights),
                        ("--train-dataset", train_dataset)):
        if value is not None:
            raise BenchmarkError(f"{flag} trains or builds a backbone; it does not apply to --model (a model the "
                                 "benchmark did not train): drop it")


def external_model_spec(module: Any, source: str, name: str, weights_path: str | None = None) -> ModelSpec:
    """The ModelSpec of a user's model: named `name`, identified by its content (input size set by make_spec)."""
    from benchmark.models.external import content_hash

    return ModelSpec(name, weights_sha256=content_hash(module),
                     weights_path=str(Path(weights_path).resolve()) if weights_path else None, source=source)
