"""The package's import graph: no circle, and nothing below ``llama.py`` imports it.

Every import counts: at module level, inside functions and under ``TYPE_CHECKING`` (an import that only
type checkers run still ties the modules together for a reader). Importing a submodule does not count
as importing its package's ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import llama_rewire

ROOT = Path(llama_rewire.__file__).resolve().parent
# what may import the Llama: the package's face, and what is built on a Llama (commands, server,
# evaluation)
ABOVE_LLAMA = ("llama_rewire", "llama_rewire.cli", "llama_rewire.server", "llama_rewire.eval")


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import mod` imports the module; `from mod import name` the module itself
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        for target in targets:
            t = target
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods) | {"llama_rewire._core"}  # the native extension: a leaf
    return {name: imports(name, path, known) for name, path in mods.items()}


def test_the_circle_finder_finds_circles() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_graph_is_read_from_the_sources(graph: dict[str, set[str]]) -> None:
    assert "llama_rewire.engine" in graph["llama_rewire.llama"]
    assert "llama_rewire.engine.sampling" in graph["llama_rewire.llama"]
    assert "llama_rewire._core" in graph["llama_rewire.engine.sampling"]
    assert len(graph) > 60


def test_the_package_has_no_import_circle(graph: dict[str, set[str]]) -> None:
    assert circles(graph) == []


def test_nothing_below_the_llama_imports_it(graph: dict[str, set[str]]) -> None:
    def above(name: str) -> bool:
        return any(name == top or (top != "llama_rewire" and name.startswith(top + "."))
                   for top in ABOVE_LLAMA)

    importers = sorted(m for m, targets in graph.items() if "llama_rewire.llama" in targets and not above(m))
    assert importers == []


def test_the_engine_imports_nothing_above_it(graph: dict[str, set[str]]) -> None:
    allowed = ("llama_rewire.engine", "llama_rewire._core", "llama_rewire._params", "llama_rewire.errors",
               "llama_rewire.rpc")
    wrong = sorted((m, t) for m, targets in graph.items() if m.startswith("llama_rewire.engine")
                   for t in targets if not t.startswith(allowed))
    assert wrong == []
