"""The package's layering: imports run downwards only (config -> graph -> costs -> engine -> metrics -> reports).

Every `import` in `simulator/`, at module level or inside a function, is read with `ast`. A module may import
from its own layer or a lower one; no two modules import each other through any chain; no module imports a
name that starts with an underscore from another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "simulator"

#: Lowest first. A module's layer is that of the longest prefix of its dotted name listed here.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("simulator", "simulator.files"),
    ("simulator.config",),
    ("simulator.placement", "simulator.costs"),
    ("simulator.graph",),
    ("simulator.op_time", "simulator.engine"),
    ("simulator.simulate",),
    ("simulator.memory", "simulator.verify", "simulator.audit", "simulator.critical_path"),
    ("simulator.metrics",),
    ("simulator.pipeline",),
    ("simulator.serving",),
    ("simulator.sweep", "simulator.calibration"),
    ("simulator.whatif",),
    ("simulator.report",),
    ("simulator.api",),
    ("simulator.commands",),
    ("simulator.cli",),
)


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")
    return best


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str | None = None) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import of the package in one file."""
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.startswith("simulator")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("simulator"):
                names = [alias.name for alias in node.names]
                # `from simulator import costs` names a module, not an attribute
                submodules = [
                    n
                    for n in names
                    if (PACKAGE.parent / (target + "." + n).replace(".", "/")).exists()
                    or (PACKAGE.parent / ((target + "." + n).replace(".", "/") + ".py")).exists()
                ]
                for sub in submodules:
                    found.append((f"{target}.{sub}", [], node.lineno))
                rest = [n for n in names if n not in submodules]
                if rest or not submodules:
                    found.append((target, rest, node.lineno))
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
EDGES = [(m, target, names, line) for m, p in MODULES.items() for target, names, line in imports_of(p)]


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downwards(module):
    upward = [
        f"{module}:{line} imports {target} (layer {layer_of(target)} > {layer_of(module)})"
        for m, target, _, line in EDGES
        if m == module and layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph = nx.DiGraph()
    graph.add_nodes_from(MODULES)
    for module, target, _, _ in EDGES:
        # an imported package runs its __init__; a name imported from a package may come from a submodule
        if target in MODULES and target != module and not module.startswith(target + "."):
            graph.add_edge(module, target)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_no_private_names_imported_across_modules():
    private = [
        f"{module}:{line} imports {name} from {target}"
        for module, target, names, line in EDGES
        for name in names
        if name.startswith("_") and target != module
    ]
    assert not private, "\n".join(private)


#: The SimPy users: the operator engine, the request-level serving model and its disaggregated variant
#: (prefill and decode pools) and the link ports its KV transfers share: SimPy process models too.
SIMPY_MODULES = (
    "simulator.engine",
    "simulator.serving.simulate",
    "simulator.serving.disagg_simulate",
    "simulator.serving.link_network",
)


def test_only_engines_import_simpy_and_only_reports_import_matplotlib():
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        roots = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        roots |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        if "simpy" in roots:
            assert module in SIMPY_MODULES, f"{module} imports simpy"
        if "matplotlib" in roots:
            assert module.startswith("simulator.report."), f"{module} imports matplotlib"


def test_the_checker_sees_upward_private_and_relative_imports(tmp_path):
    """The rules above can fail: a config module importing the graph, a private name and a relative import."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from simulator.graph import build\nfrom simulator.pipeline import _no_gc\n"
        "def f():\n    from ..report import dot\n"
    )
    found = imports_of(probe, "simulator.config.probe")
    targets = {target for target, _, _ in found}
    assert targets == {"simulator.graph", "simulator.pipeline", "simulator.report.dot"}
    assert all(layer_of(t) > layer_of("simulator.config.probe") for t in targets)
    assert ("simulator.pipeline", ["_no_gc"], 2) in found
