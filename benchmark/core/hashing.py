"""Content hashes: of JSON payloads, files, folders, tensors, and of the source code a result depends on.

A cache entry's key holds what produced it (configuration, data content, code); its manifest holds
the hash of what it contains, verified on load.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

#: project packages whose source counts towards a result's code digest (plugins add their own)
PROJECT_PACKAGES = ("benchmark", "attacks", "defenses")
_CHUNK = 1 << 20


def fingerprint(payload: Any, length: int = 16) -> str:
    """Short stable hash of a JSON-able payload (keys sorted)."""
    blob = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def sha256_file(path: str | Path) -> str:
    """Full sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(folder: str | Path, exclude: Iterable[str] = ()) -> str:
    """sha256 over the relative names and bytes of every file under `folder` (sorted, `exclude` names skipped)."""
    folder = Path(folder)
    skip = set(exclude)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in skip):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(sha256_file(path).encode())
    return h.hexdigest()


def file_digests(folder: str | Path, exclude: Iterable[str] = ()) -> dict[str, str]:
    """{relative name: sha256} of every file under `folder`, for manifests verified on load."""
    folder = Path(folder)
    skip = set(exclude)
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def verify_digests(folder: str | Path, expected: Mapping[str, str]) -> list[str]:
    """Relative names whose file is missing or whose content differs from `expected`."""
    folder = Path(folder)
    bad = []
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != digest:
            bad.append(name)
    return bad


def manifest_intact(folder: str | Path, manifest: str = "manifest.json", exact: str | None = None) -> bool:
    """True when `folder/manifest` lists files (`files`: name -> sha256) that all match on disk.

    With `exact` (a glob such as "*.png"), files matching it that the manifest does not list also fail.
    """
    folder = Path(folder)
    try:
        files = json.loads((folder / manifest).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return False
    if not isinstance(files, dict) or not files:
        return False
    if exact is not None and {p.relative_to(folder).as_posix() for p in folder.rglob(exact)} - set(files):
        return False
    return not verify_digests(folder, files)


def tensor_digest(tensors: Iterable[torch.Tensor] | Mapping[str, torch.Tensor]) -> str:
    """sha256 of tensors' dtypes, shapes and bytes (names too, for a mapping)."""
    h = hashlib.sha256()
    items = sorted(tensors.items()) if isinstance(tensors, Mapping) else enumerate(tensors)
    for name, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def module_state_digest(module: torch.nn.Module) -> str:
    """Digest of a module's parameters and buffers: equal before and after anything that must not change them."""
    return tensor_digest({**dict(module.named_parameters()), **dict(module.named_buffers())})


def _top_package(module_name: str) -> str:
    return module_name.split(".", 1)[0]


def _module_closure(start: str, packages: set[str]) -> set[str]:
    """Modules reachable from `start` through module globals, limited to `packages`."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen or _top_package(name) not in packages or name not in sys.modules:
            continue
        seen.add(name)
        for value in vars(sys.modules[name]).values():
            if isinstance(value, ModuleType):
                todo.append(value.__name__)
            else:
                owner = getattr(value, "__module__", None)
                if isinstance(owner, str):
                    todo.append(owner)
    return seen


@functools.lru_cache(maxsize=512)
def _code_only(source: str) -> str:
    """A module's syntax tree without docstrings (memoised on the source text: digests are taken per cell)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def source_digest(*objects: Any) -> str:
    """Hash of the code of the modules `objects` are defined in and of every project module they reach.

    A cached result keyed by it is recomputed whenever that code changes, plugins included: the
    plugin's own top-level package joins the project packages for the walk. Comments, formatting
    and docstrings are left out (the syntax tree is hashed), so documenting code retrains nothing.
    """
    packages = set(PROJECT_PACKAGES)
    starts = []
    for obj in objects:
        module = obj if isinstance(obj, ModuleType) else inspect.getmodule(obj)
        if module is None:
            continue
        packages.add(_top_package(module.__name__))
        starts.append(module.__name__)
    names: set[str] = set()
    for start in starts:
        names |= _module_closure(start, packages)
    h = hashlib.sha256()
    for name in sorted(names):
        path = getattr(sys.modules[name], "__file__", None)
        if path and Path(path).is_file() and path.endswith(".py"):
            h.update(name.encode() + b"\0")
            h.update(_code_only(Path(path).read_text(encoding="utf-8")).encode())
    return h.hexdigest()[:16]
