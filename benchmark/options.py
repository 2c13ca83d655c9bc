"""Typed option dataclasses for attacks and defenses, filled from `key=value` strings."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from benchmark.errors import BenchmarkError

O = TypeVar("O")


def parse_kv(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        for item in filter(None, pair.split(",")):
            if "=" not in item:
                raise BenchmarkError(f"option '{item}' is not key=value (e.g. --defense-opt gamma=2.0)")
            key, value = item.split("=", 1)
            out[key.strip().replace("-", "_")] = value.strip()
    return out


def _coerce(value: Any, target: Any) -> Any:
    if not isinstance(value, str):
        return value
    kind = target if isinstance(target, type) else type(target)
    if kind is bool:
        return value.lower() in ("1", "true", "yes", "on")
    if kind in (int, float):
        if "/" in value:  # 8/255 style epsilons
            num, den = value.split("/")
            return kind(float(num) / float(den))
        return kind(float(value)) if kind is int else float(value)
    if kind is tuple:
        return tuple(v for v in value.split("+") if v)
    return value


def build_options(cls: type[O], owner: str, values: dict[str, Any]) -> O:
    """Instantiate the options dataclass; unknown keys give an error listing the valid ones."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise BenchmarkError(f"{owner} has no option {', '.join(unknown)}; valid options: "
                             f"{', '.join(fields) or '(none)'}")
    defaults = cls()
    kwargs = {k: _coerce(v, getattr(defaults, k)) for k, v in values.items()}
    return dataclasses.replace(defaults, **kwargs)
