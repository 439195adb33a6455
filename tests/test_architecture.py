"""The architecture contract: imports follow the layers and no two files import each other (even indirectly).

deploy -> actor -> {hardware, learner} -> protos -> buffers; see tests/import_graph.py (which also
prints the graph) and docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path

from import_graph import LAYERS, build_graph, cycles, imports_of, layer_order, layer_violations, module_files, report


def test_every_import_follows_the_layers() -> None:
    bad = layer_violations(build_graph())
    assert not bad, f"imports against the layers {layer_order()}:\n" + "\n".join(
        f"  {a} imports {b}" for a, b in bad)


def test_no_import_cycle_between_files() -> None:
    loops = cycles(build_graph())
    assert not loops, "import cycles:\n" + "\n".join("  " + " <-> ".join(loop) for loop in loops)


def test_the_graph_sees_every_package_and_lazy_imports() -> None:
    graph = build_graph()
    assert {m.split(".")[1] for m in graph} == set(LAYERS)
    assert "hilrl.buffers.store" in graph["hilrl.learner.core"]  # a module-level import
    # a function-level (lazy) import: learner/training.py imports q_figure inside a method
    assert "hilrl.learner.q_figure" in graph["hilrl.learner.training"]


def test_the_checker_catches_a_wrong_direction_a_sibling_edge_and_a_cycle() -> None:
    graph = {
        "hilrl.buffers.store": ["hilrl.learner.core"],        # bottom imports up
        "hilrl.learner.core": ["hilrl.buffers.store"],        # (and so a cycle across packages)
        "hilrl.learner.td3": ["hilrl.hardware.sim"],          # siblings: learner must not import hardware
        "hilrl.hardware.sim": ["hilrl.buffers.spec"],         # fine
        "hilrl.actor.a": ["hilrl.actor.b"],
        "hilrl.actor.b": ["hilrl.actor.c"],
        "hilrl.actor.c": ["hilrl.actor.a", "hilrl.learner.td3"],  # a three-file cycle inside one package
        "hilrl.deploy.cli": ["hilrl.actor.a", "hilrl.learner.core", "hilrl.buffers.spec"],  # fine
        "hilrl.buffers.spec": [],
    }
    assert layer_violations(graph) == [("hilrl.buffers.store", "hilrl.learner.core"),
                                       ("hilrl.learner.td3", "hilrl.hardware.sim")]
    assert cycles(graph) == [["hilrl.actor.a", "hilrl.actor.b", "hilrl.actor.c"],
                             ["hilrl.buffers.store", "hilrl.learner.core"]]
    text, ok = report(graph)
    assert not ok and "hilrl.learner.td3 -> hilrl.hardware.sim" in text


def test_the_checker_passes_a_clean_graph() -> None:
    graph = {"hilrl.deploy.cli": ["hilrl.actor.loop"], "hilrl.actor.loop": ["hilrl.hardware.sim", "hilrl.learner.x"],
             "hilrl.hardware.sim": ["hilrl.protos.codec"], "hilrl.learner.x": ["hilrl.protos.codec"],
             "hilrl.protos.codec": ["hilrl.buffers.spec"], "hilrl.buffers.spec": []}
    assert layer_violations(graph) == [] and cycles(graph) == []
    assert report(graph)[1]


def test_imports_are_read_from_source_lazy_relative_and_type_checking_ones_included(tmp_path: Path) -> None:
    for package in LAYERS:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "buffers" / "spec.py").write_text("X = 1\n")
    (tmp_path / "learner" / "core.py").write_text("Y = 1\n")
    (tmp_path / "buffers" / "store.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import numpy\n"
        "from . import spec\n"                       # relative, a module
        "if TYPE_CHECKING:\n"
        "    from hilrl.learner.core import Y\n"     # a name in a module
        "def f():\n"
        "    import hilrl.deploy\n"                  # lazy, a package
        "    from hilrl.protos.v1.gone import Z\n")  # no such module: its nearest package
    files = module_files(tmp_path)
    found = imports_of("hilrl.buffers.store", files["hilrl.buffers.store"], files)
    assert sorted(found) == ["hilrl.buffers.spec", "hilrl.deploy", "hilrl.learner.core", "hilrl.protos"]
