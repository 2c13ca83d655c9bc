"""Typed option dataclasses for data sets, attacks and defenses, filled strictly from `key=value` strings.

Values are parsed by the type of the field's default: booleans accept true/false/yes/no/on/off/1/0
only, integers must be integral, floats accept `a/b` fractions with a non-zero denominator,
tuples are `+`-separated and kept sorted (an ablation list has one canonical spelling), nested
option dataclasses are reached by their field names (`gamma=2`) or dotted (`fnes.gamma=2`).
Every problem is a one-line `BenchmarkError` naming the option and what it accepts. A field declares
the values it accepts beside its type (`option(16, low=1)`, `option(0.5, low=0, high=1)`,
`option("auto", choices=(...))`); they are checked when a specification is built and shown by
`python -m benchmark list --details NAME`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

from benchmark.core.errors import BenchmarkError

O = TypeVar("O")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The values one option accepts: a closed or open interval, or a list of choices."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()

    def admits(self, value: Any) -> bool:
        """Whether `value` is allowed (a number in the interval, or one of the choices)."""
        if self.choices:
            return value in self.choices
        if isinstance(value, tuple):
            return all(self.admits(v) for v in value)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return True
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        """The rule in words: `positive`, `at least 2`, `in [0, 1]`, `one of a, b`."""
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.high is None:
            if self.low == 0 and self.low_open:
                return "positive"
            return f"{'above' if self.low_open else 'at least'} {_number(self.low)}"
        if self.low is None:
            return f"{'below' if self.high_open else 'at most'} {_number(self.high)}"
        return (f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}")


def _number(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else f"{value:g}"


def option(default: Any, *, low: float | None = None, high: float | None = None, above: float | None = None,
           below: float | None = None, choices: tuple[Any, ...] = ()) -> Any:
    """An option field with the values it accepts: `low`/`high` are inclusive bounds, `above`/`below` exclusive."""
    bounds = Bounds(low=above if above is not None else low, high=below if below is not None else high,
                    low_open=above is not None, high_open=below is not None, choices=tuple(choices))
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def bounds_of(cls: type, path: tuple[str, ...]) -> Bounds | None:
    """The declared bounds of the option at `path` (through nested option dataclasses), if any."""
    for i, name in enumerate(path):
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        if i == len(path) - 1:
            return f.metadata.get("bounds")
        cls = type(getattr(cls(), name))
    return None


def parse_kv(pairs: list[str] | None, what: str = "--defense-opt") -> dict[str, str]:
    """`['a=1,b=2', 'c=3']` -> {'a': '1', 'b': '2', 'c': '3'}; dashes in keys become underscores."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        for item in filter(None, (p.strip() for p in pair.split(","))):
            if "=" not in item:
                raise BenchmarkError(f"{what} '{item}' is not key=value (e.g. {what} gamma=2.0)")
            key, value = item.split("=", 1)
            key = key.strip().replace("-", "_")
            if not key or not value.strip():
                raise BenchmarkError(f"{what} '{item}' needs both a key and a value (e.g. {what} gamma=2.0)")
            out[key] = value.strip()
    return out


def parse_number(text: str, kind: type, owner: str, key: str) -> int | float:
    """Strict int/float parsing; floats may be written as a fraction like 8/255."""
    hint = "an integer" if kind is int else "a number (or a fraction such as 8/255)"
    try:
        if "/" in text:
            if kind is int:
                raise ValueError
            num, den = text.split("/", 1)
            if float(den) == 0:
                raise BenchmarkError(f"{owner}: option {key}={text} divides by zero; give {hint}")
            value = float(num) / float(den)
        else:
            value = int(text) if kind is int else float(text)
    except ValueError:
        raise BenchmarkError(f"{owner}: option {key}={text!r} is not {hint}") from None
    if not math.isfinite(value):
        raise BenchmarkError(f"{owner}: option {key}={text} is not finite; give {hint}")
    return value


def coerce(value: Any, default: Any, owner: str, key: str) -> Any:
    """Parse a string into the type of `default`; non-strings are type-checked the same way."""
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise BenchmarkError(f"{owner}: option {key}={value!r} is not a boolean; use true or false")
    if kind in (int, float):
        if isinstance(value, bool):
            raise BenchmarkError(f"{owner}: option {key}={value!r} is not a number")
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise BenchmarkError(f"{owner}: option {key}={value!r} is not finite; give a finite number")
            if kind is int and float(value) != int(value):
                raise BenchmarkError(f"{owner}: option {key}={value!r} is not an integer")
            return kind(value)
        return parse_number(str(value), kind, owner, key)
    if kind is tuple:
        items = value if isinstance(value, (tuple, list)) else [v for v in str(value).split("+") if v]
        if default and all(isinstance(v, int) for v in default):  # an ordered list of sizes, e.g. channels
            return tuple(int(parse_number(str(v), int, owner, key)) for v in items)
        return tuple(sorted({str(v).strip() for v in items}))  # a set of names: one canonical spelling
    if kind is str:
        return str(value)
    raise BenchmarkError(f"{owner}: option {key} cannot be set from the command line")


def _nested(cls: type) -> dict[str, type]:
    return {f.name: type(getattr(cls(), f.name)) for f in dataclasses.fields(cls)
            if dataclasses.is_dataclass(getattr(cls(), f.name))}


def option_paths(cls: type) -> dict[str, tuple[str, ...]]:
    """Every settable option of `cls` by its flat name -> path of field names (nested dataclasses flattened)."""
    paths: dict[str, tuple[str, ...]] = {}
    nested = _nested(cls)
    for f in dataclasses.fields(cls):
        if f.name in nested:
            for sub, path in option_paths(nested[f.name]).items():
                paths.setdefault(sub, (f.name, *path))
                paths[f"{f.name}.{sub}"] = (f.name, *path)
        else:
            paths[f.name] = (f.name,)
    return paths


def option_table(cls: type) -> list[tuple[str, str, Any, str]]:
    """(flat name, type name, default, accepted values) of every option, for `list --details`."""
    defaults = cls()
    rows = []
    for name, path in option_paths(cls).items():
        if "." in name:
            continue
        value: Any = defaults
        for part in path:
            value = getattr(value, part)
        bounds = bounds_of(cls, path)
        rows.append((name, type(value).__name__, value, bounds.describe() if bounds else "any"))
    return rows


def _set(obj: Any, path: tuple[str, ...], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _set(getattr(obj, path[0]), path[1:], value)})


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        obj = getattr(obj, part)
    return obj


def build_options(cls: type[O], owner: str, values: dict[str, Any]) -> O:
    """Instantiate the options dataclass strictly; unknown keys give an error listing the valid ones."""
    paths = option_paths(cls)
    unknown = sorted(set(values) - set(paths))
    if unknown:
        valid = ", ".join(k for k in paths if "." not in k) or "(none)"
        raise BenchmarkError(f"{owner} has no option {', '.join(unknown)}; valid options: {valid}")
    options: Any = cls()
    for key, raw in values.items():
        path = paths[key]
        value = coerce(raw, _get(options, path), owner, key)
        bounds = bounds_of(cls, path)
        if bounds is not None and not bounds.admits(value):
            raise BenchmarkError(f"{owner}: option {key}={raw} must be {bounds.describe()}")
        options = _set(options, path, value)
    return options


def changed_options(options: Any) -> dict[str, Any]:
    """{flat name: value} of the options that differ from the dataclass defaults (the canonical form)."""
    defaults = type(options)()
    out = {}
    for name, path in option_paths(type(options)).items():
        if "." in name:
            continue
        value = _get(options, path)
        if value != _get(defaults, path):
            out[name] = value
    return dict(sorted(out.items()))


def format_value(key: str, value: Any) -> str:
    """Canonical text of an option value: 8/255 for epsilons and steps, `a+b` for tuples, repr for floats."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "+".join(str(v) for v in value)
    if isinstance(value, float):
        units = value * 255
        if key.split(".")[-1] in ("eps", "step") and abs(units - round(units, 6)) < 1e-9:
            return f"{round(units, 6):g}/255"
        return repr(value)
    return str(value)
