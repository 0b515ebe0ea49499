"""The package's layers, read from its source (every import, at the top of a module or inside a
function): no import cycle, and the run machinery and the metric import no experiment family."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "grokking"
FAMILIES = ("grokking.algorithmic", "grokking.lm", "grokking.analysis")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(name: str) -> set[str]:
    """The project's modules `name` imports (`from grokking.x import y` counts grokking.x.y when
    that is a module, else grokking.x)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return {module for module in found if module in MODULES and module != "grokking"}


GRAPH = {name: imports(name) for name in MODULES}


def test_no_module_imports_itself_back():
    """Depth-first search for a cycle; the message names it."""
    done, on_path = set(), []

    def visit(name):
        if name in on_path:
            cycle = on_path[on_path.index(name) :] + [name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        on_path.append(name)
        for child in sorted(GRAPH[name]):
            visit(child)
        on_path.pop()
        done.add(name)

    for name in sorted(GRAPH):
        visit(name)


@pytest.mark.parametrize("layer", ["grokking.runs", "grokking.lar"])
def test_the_shared_layers_import_no_family(layer):
    upward = {
        f"{name} imports {child}"
        for name, children in GRAPH.items()
        if name.startswith(layer)
        for child in children
        if child.startswith(FAMILIES)
    }
    assert not upward


def test_the_graph_reads_imports_wherever_they_are(tmp_path, monkeypatch):
    source = "import os\n\ndef f():\n    from grokking.lm import corpus\n"
    monkeypatch.setitem(MODULES, "probe", tmp_path / "probe.py")
    (tmp_path / "probe.py").write_text(source)
    assert imports("probe") == {"grokking.lm.corpus"}  # inside a function, a module by name
    assert "grokking.runs.rundir" in GRAPH["grokking.algorithmic.build"]


@pytest.mark.parametrize("layer", ["runs", "lar"])
def test_the_shared_layers_write_no_word_of_the_layers_above(layer):
    """No string in their code is a family's name or a checkpoint kind a family keeps; "grokking"
    (the package's name too) and "final" (the run machinery's own checkpoint) aside."""
    from grokking.algorithmic.record import CHECKPOINT_KINDS

    words = {"algorithmic", "lm", *CHECKPOINT_KINDS} - {"grokking", "final"}
    found = {
        f"{path.relative_to(PACKAGE)}: {node.value!r}"
        for path in (PACKAGE / layer).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in words
    }
    assert not found
