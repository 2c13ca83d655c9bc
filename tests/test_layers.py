"""The package is laid out by job: no import cycle, and no layer imports one above it."""

from __future__ import annotations

import subprocess
import sys

from benchmark.layers import cycles, import_graph, layer, modules, upward_imports


def test_no_import_cycle_and_no_upward_import():
    edges = import_graph(modules())
    assert cycles(edges) == []
    assert upward_imports(edges) == []


def test_the_checks_catch_what_they_look_for():
    edges = {"benchmark.core.a": {"benchmark.run.b"}, "benchmark.run.b": {"benchmark.core.a"},
             "attacks.x": {"defenses.y"}, "defenses.y": set()}
    assert cycles(edges) == [["benchmark.core.a", "benchmark.run.b"]]
    assert upward_imports(edges) == [("attacks.x", "defenses.y"), ("benchmark.core.a", "benchmark.run.b")]


def test_every_module_has_a_layer():
    assert layer("benchmark.cli.main") == 5 and layer("benchmark.report.site") == 4
    assert layer("benchmark.run.execute") == 3 and layer("defenses.ddid.fnes") == 2
    assert layer("benchmark.core.registry") == 1 and layer("benchmark.models.external") == 1
    assert all(layer(m) is not None for m in modules() if m not in ("benchmark", "benchmark.__main__",
                                                                     "benchmark.layers"))


def test_the_layering_prints_with_one_command():
    out = subprocess.run([sys.executable, "-m", "benchmark.layers"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout[-2000:]
    assert "layer 3:" in out.stdout and "0 cycles, 0 upward imports" in out.stdout
