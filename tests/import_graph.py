"""The import graph between hilrl's packages, read from the source with `ast` (nothing is imported).

Run `python tests/import_graph.py` to print which of our packages imports which (with how many
import statements), every import that runs against the layer order, and every cycle between
files; `--files` also lists each file-level edge. Exit status 1 when anything breaks the contract.
`tests/test_architecture.py` checks the same contract in the test suite.

The layers, top to bottom (a package may import itself and any package on a lower layer only;
`hardware` and `learner` share a layer, so neither imports the other):

    deploy -> actor -> {hardware, learner} -> protos -> buffers

Every import statement counts, including those inside functions (lazy imports) and under
`if TYPE_CHECKING:`. Tests and benchmarks sit above all layers and are not checked.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = "hilrl"
# layer rank per package: a package may import a package of strictly lower rank (and itself)
LAYERS: dict[str, int] = {"deploy": 4, "actor": 3, "hardware": 2, "learner": 2, "protos": 1, "buffers": 0}

Graph = Mapping[str, Iterable[str]]  # module -> the modules it imports (all ours)


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of ours (`hilrl.actor.loop`, `hilrl.actor` for its __init__) -> its file."""
    out: dict[str, Path] = {}
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([TOP, *parts])] = path
    return out


def _package_of(module: str) -> str:
    return module.split(".")[1]


def imports_of(module: str, path: Path, known: Iterable[str]) -> list[str]:
    """The modules of ours that `module` (source at `path`) imports, one entry per import statement
    target, in source order. `from hilrl.x import y` names module `hilrl.x.y` when it is one,
    else `hilrl.x` (y is then a name defined in x)."""
    known = set(known)
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from ..y import z
                anchor = base[: len(base) - node.level + 1]
                source = ".".join(anchor + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = []
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                targets.append(candidate if candidate in known else source)
        else:
            continue
        for target in targets:
            if not target.startswith(TOP + "."):
                continue
            while target not in known and "." in target:  # `import hilrl.x.y.z` of a name: its module
                target = target.rsplit(".", 1)[0]
            if target in known and target != module:
                found.append(target)
    return found


def build_graph(root: Path = ROOT) -> dict[str, list[str]]:
    """module -> modules of ours it imports (with repeats, one per import statement)."""
    files = module_files(root)
    return {module: imports_of(module, path, files) for module, path in files.items()}


def layer_violations(graph: Graph, layers: Mapping[str, int] = LAYERS) -> list[tuple[str, str]]:
    """(importer, imported) pairs that run against the layer order, sorted, without repeats."""
    bad = set()
    for module, targets in graph.items():
        mine = _package_of(module)
        for target in targets:
            theirs = _package_of(target)
            if theirs != mine and layers[theirs] >= layers[mine]:
                bad.add((module, target))
    return sorted(bad)


def cycles(graph: Graph) -> list[list[str]]:
    """The file-level import cycles: each strongly connected component of more than one module
    (Tarjan's algorithm, iterative), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    edges = {m: sorted(set(t)) for m, t in graph.items()}
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(edges.get(start, ())))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def package_edges(graph: Graph) -> Counter[tuple[str, str]]:
    """(importer package, imported package) -> number of import statements between them."""
    edges: Counter[tuple[str, str]] = Counter()
    for module, targets in graph.items():
        for target in targets:
            if _package_of(module) != _package_of(target):
                edges[(_package_of(module), _package_of(target))] += 1
    return edges


def layer_order(layers: Mapping[str, int] = LAYERS) -> str:
    """The layers top to bottom, siblings in braces: `deploy -> actor -> {hardware, learner} -> ...`."""
    ranks = sorted(set(layers.values()), reverse=True)
    names = [sorted(p for p, r in layers.items() if r == rank) for rank in ranks]
    return " -> ".join(n[0] if len(n) == 1 else "{" + ", ".join(n) + "}" for n in names)


def report(graph: Graph, files: bool = False) -> tuple[str, bool]:
    """The printable graph and whether the contract holds."""
    lines = ["package imports (importer -> imported: import statements):"]
    edges = package_edges(graph)
    for package in LAYERS:
        targets = sorted((t, n) for (p, t), n in edges.items() if p == package)
        line = ", ".join(f"{t} ({n})" for t, n in targets) or "nothing of ours"
        lines.append(f"  {package:8s} -> {line}")
    bad = layer_violations(graph)
    loops = cycles(graph)
    lines.append(f"imports against the layers {layer_order()}: {len(bad)}")
    lines += [f"  {a} -> {b}" for a, b in bad]
    lines.append(f"file-level import cycles: {len(loops)}")
    lines += ["  " + " <-> ".join(loop) for loop in loops]
    if files:
        lines.append("file-level edges:")
        for module in sorted(graph):
            for target in sorted(set(graph[module])):
                lines.append(f"  {module} -> {target}")
    return "\n".join(lines), not bad and not loops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", action="store_true", help="also list every file-level edge")
    args = parser.parse_args(argv)
    text, ok = report(build_graph(), files=args.files)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
