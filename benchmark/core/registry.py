"""Name -> object registries with decorator registration, wildcard listing and plugin discovery.

One `Registry` instance exists per kind (data sets, backbones, attacks, defenses). Third-party
packages add entries through an `importlib.metadata` entry-point group; loading the entry point
imports the module, whose decorators register the entries.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib.metadata
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_VALID_NAME = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")


def _distribution(name: str) -> str:
    try:
        return f"{name} {importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{name} (not installed)"


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class EntryInfo:
    """Typed metadata every registry entry carries (each registry's kind extends it, timm's `PretrainedCfg` idea).

    Unknown keys at registration are an error, so a misspelt key never silently disappears.
    """

    #: one line for `list`
    summary: str = ""
    #: the paper or source the entry implements
    paper: str = ""
    #: anything else `list` should say
    note: str = ""
    #: the distribution that registered the entry, with its version (set by the registry)
    dist: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The metadata as a dictionary (for `list --details` and records)."""
        return dataclasses.asdict(self)



@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered name, its object and its typed metadata."""
    name: str
    obj: T
    meta: EntryInfo = field(default_factory=EntryInfo)


class Registry(Generic[T]):
    """Name -> object registry with decorator registration and entry-point plugins."""
    def __init__(self, kind: str, entry_point_group: str | None = None,
                 builtin_modules: Iterable[str] = (), info: type[EntryInfo] = EntryInfo) -> None:
        self.kind = kind
        self.info = info
        self.entry_point_group = entry_point_group
        self._builtin_modules = tuple(builtin_modules)
        self._entries: dict[str, Entry[T]] = {}
        #: name families resolved on demand (`timm:resnet50`): prefix -> (resolver, one-line summary)
        self._families: dict[str, tuple[Callable[[str], tuple[T, dict[str, Any]]], str]] = {}
        self._resolved: dict[str, Entry[T]] = {}
        self._loaded = False
        self.plugin_errors: dict[str, str] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator: `@REGISTRY.register("fna", family=...)`."""

        def decorator(obj: T) -> T:
            if not _VALID_NAME.fullmatch(name):
                raise ValueError(f"{self.kind} name {name!r} is not allowed: use lower-case letters, digits, "
                                 "'-', '_', '.' and '+' (it names folders and CSV rows)")
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.kind} '{name}' is already registered "
                                 f"by {self._entries[name].obj!r}")
            self._entries[name] = Entry(name, obj, self.make_info(name, meta))
            return obj

        return decorator

    def make_info(self, name: str, meta: dict[str, Any]) -> EntryInfo:
        """The typed metadata of an entry; a key its kind does not declare is an error naming the valid ones."""
        fields = {f.name for f in dataclasses.fields(self.info)}
        unknown = sorted(set(meta) - fields)
        if unknown:
            raise ValueError(f"{self.kind} '{name}': unknown metadata {', '.join(unknown)}; "
                             f"{self.info.__name__} has {', '.join(sorted(fields))}")
        return self.info(**meta)

    def add_family(self, prefix: str, resolve: Callable[[str], tuple[T, dict[str, Any]]], summary: str) -> None:
        """Names `PREFIX:NAME` resolved on first use: `resolve(NAME)` returns (object, metadata) or raises."""
        if not _VALID_NAME.fullmatch(prefix):
            raise ValueError(f"{self.kind} family prefix {prefix!r} is not allowed")
        self._families[prefix] = (resolve, summary)

    def families(self) -> dict[str, str]:
        """Prefix -> summary of every name family (`timm` -> 'any timm model ...')."""
        self._ensure_loaded()
        return {p: s for p, (_, s) in sorted(self._families.items())}

    def _resolve_family(self, name: str) -> Entry[T] | None:
        prefix, sep, rest = name.partition(":")
        if not sep or prefix not in self._families:
            return None
        if name not in self._resolved:
            if not rest or "\n" in rest or not rest.isprintable():
                raise UnknownNameError(f"{self.kind} '{name}': write {prefix}:NAME")
            obj, meta = self._families[prefix][0](rest)
            self._resolved[name] = Entry(name, obj, self.make_info(name, meta))
        return self._resolved[name]

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtin_modules:
            importlib.import_module(module)
        own = _distribution("reid-robustness-bench")
        for entry in self._entries.values():
            entry.meta.dist = entry.meta.dist or own
        if self.entry_point_group is None:
            return
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            before = set(self._entries)
            try:
                ep.load()
            except Exception as exc:  # a broken plugin must not take the benchmark down
                self.plugin_errors[ep.name] = f"{type(exc).__name__}: {exc}"
                continue
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else ep.value
            for name in set(self._entries) - before:
                self._entries[name].meta.dist = self._entries[name].meta.dist or dist

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a wildcard, sorted."""
        self._ensure_loaded()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def entry(self, name: str) -> Entry[T]:
        """The entry of a name (one-line error listing valid names)."""
        self._ensure_loaded()
        if name in self._entries:
            return self._entries[name]
        resolved = self._resolve_family(name)
        if resolved is None:
            raise UnknownNameError(self._unknown_message(name))
        return resolved

    def get(self, name: str) -> T:
        """The registered object of a name."""
        return self.entry(name).obj

    def meta(self, name: str) -> Any:
        """The typed metadata of a name (the registry's `info` dataclass)."""
        return self.entry(name).meta

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._entries or name.partition(":")[0] in self._families and ":" in name

    def resolve(self, spec: str, exclude: Iterable[str] = ()) -> list[str]:
        """Turn 'all', 'a,b' or wildcards like 'art-*' into a list of registered names."""
        self._ensure_loaded()
        excluded = set(exclude)
        out: list[str] = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            if part == "all":
                matched = [n for n in self.names() if n not in excluded]
            elif any(ch in part for ch in "*?["):
                matched = self.names(part)
                if not matched:
                    raise UnknownNameError(self._unknown_message(part))
            else:
                self.entry(part)
                matched = [part]
            out.extend(m for m in matched if m not in out)
        return out

    def _unknown_message(self, name: str) -> str:
        valid = self.names() + [f"{p}:NAME" for p in self._families]
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        broken = "".join(f"; plugin '{plugin}' failed to import ({err})" for plugin, err in
                         sorted(self.plugin_errors.items()))
        return f"unknown {self.kind} '{name}'.{hint} Valid {self.kind}s: {', '.join(valid)}{broken}"
