"""The package's layers and its import graph: `python -m benchmark.layers` prints both and any violation.

Layers, top imports bottom, never the reverse, and no import cycle anywhere (function-level
imports included):

    5  benchmark.cli, benchmark.api       the command line and the Python API
    4  benchmark.report                   run folders, boards, tables, figures, site
    3  benchmark.run                      specification, workspace, checkpoints, cells, suites, execute
    2  attacks, defenses                  plug-ins (neither imports the other)
    1  benchmark.core, .data, .models     the library everything stands on

Read statically (by `ast`), so it needs nothing imported and runs in a fresh checkout.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "attacks", "defenses")
#: module prefix -> layer (higher imports lower); the longest matching prefix decides
LAYERS: dict[str, int] = {"benchmark.cli": 5, "benchmark.api": 5, "benchmark.report": 4, "benchmark.run": 3,
                          "attacks": 2, "defenses": 2, "benchmark.core": 1, "benchmark.data": 1,
                          "benchmark.models": 1, "benchmark": 5}
#: the package roots whose __init__ only re-exports lazily, and this module, belong to no layer
UNLAYERED = ("benchmark", "benchmark.__main__", "benchmark.layers")


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the three packages by dotted name (a package by its own name)."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the modules of the three packages it imports, anywhere in its code."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                # a package importing its own submodules, or a module its own package, is not an edge
                if target and target != name and not name.startswith(target + ".") \
                        and not target.startswith(name + "."):
                    edges[name].add(target)
    return edges


def layer(module: str) -> int | None:
    """The layer of a module (None for the unlayered package roots)."""
    if module in UNLAYERED:
        return None
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    return LAYERS[best] if best else None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def upward_imports(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a lower layer imports a higher one, or one plug-in package the other."""
    bad = []
    for src, targets in edges.items():
        for dst in targets:
            a, b = layer(src), layer(dst)
            if a is None or b is None:
                continue
            other_plugin = a == b == 2 and src.split(".")[0] != dst.split(".")[0]
            if b > a or other_plugin:
                bad.append((src, dst))
    return sorted(bad)


def report(lines: Iterable[str] = ()) -> tuple[list[str], int]:
    """The layering as text lines, and the number of violations (cycles plus upward imports)."""
    mods = modules()
    edges = import_graph(mods)
    out = list(lines)
    for level in sorted(set(LAYERS.values()), reverse=True):
        members = sorted(m for m in mods if layer(m) == level)
        out.append(f"layer {level}: {len(members)} modules")
        out.extend(f"  {m}" for m in members)
    found, upward = cycles(edges), upward_imports(edges)
    out.extend(f"CYCLE: {' -> '.join(c)}" for c in found)
    out.extend(f"UPWARD: {src} imports {dst} (layer {layer(src)} -> {layer(dst)})" for src, dst in upward)
    out.append(f"{len(found)} cycles, {len(upward)} upward imports")
    return out, len(found) + len(upward)


def main() -> int:
    """Print the layers with their modules, then every cycle and upward import; exit 1 if there is any."""
    lines, violations = report()
    print("\n".join(lines))
    return 1 if violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
