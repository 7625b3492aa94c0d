"""Static checks of pysfu's structure: no import cycle between its modules, and a docstring
(what the module owns) on each.

Every import statement counts, wherever it is: at module level, under ``if TYPE_CHECKING:``
and inside functions. A type-only or deferred import hides a cycle from the interpreter, not
from the reader: the two modules still cannot be understood, changed or tested apart. So the
graph is the one a person reading the code sees, and it must be acyclic.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "pysfu"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _resolve(name: str, known: set[str]) -> str | None:
    """``name`` or its longest prefix that is one of our modules."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The pysfu modules ``module`` imports, in any statement anywhere in the file."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1 packages
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, known)
            # Importing a submodule runs its parent packages first: not an edge of the module.
            if resolved is not None and resolved != module \
                    and not module.startswith(resolved + "."):
                out.add(resolved)
    return out


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle_in_pysfu() -> None:
    graph = import_graph()
    assert "pysfu.room" in graph and "pysfu.transport" in graph["pysfu.room"]  # it sees edges
    cycles = find_cycles(graph)
    detail = "; ".join(
        " -> ".join(f"{m} (imports {sorted(graph[m] & set(c))})" for m in c) for c in cycles)
    assert not cycles, f"import cycles in pysfu/: {detail}"


def test_the_cycle_check_finds_type_checking_and_deferred_imports(tmp_path: Path) -> None:
    """The walker itself: a cycle made only of a TYPE_CHECKING import and an import inside a
    function is still a cycle."""
    pkg = tmp_path / "pysfu"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""pkg"""\n')
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from pysfu.b import B\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "c.py").write_text("from pysfu import a\n")
    known = {"pysfu", "pysfu.a", "pysfu.b", "pysfu.c"}
    graph = {m: imports_of(m, pkg / (m.split(".")[-1] + ".py") if m != "pysfu"
                           else pkg / "__init__.py", known) for m in known}
    assert graph["pysfu.a"] == {"pysfu.b"} and graph["pysfu.b"] == {"pysfu.a"}
    assert graph["pysfu.c"] == {"pysfu.a"}
    assert find_cycles(graph) == [["pysfu.a", "pysfu.b"]]


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_says_what_it_owns(name: str) -> None:
    path = modules()[name]
    if path.stat().st_size == 0:
        pytest.skip("empty package marker")
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc) >= 20, f"{name} has no docstring saying what it owns"
