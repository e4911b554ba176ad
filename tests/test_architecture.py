"""The layering rules of issue #9, checked on the source: no import circle between the
package's modules, no reach into a Regularizer's private state, no branch on a penalty's
name outside the penalty classes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "torchpenalty"
MODULES = {
    ".".join(p.relative_to(SRC).with_suffix("").parts): p
    for p in SRC.rglob("*.py")
    if p.name != "__main__.py"
}


def _imports(nodes):
    """Every ``from ... import`` among ``nodes`` and inside them, also in functions (a
    deferred import still closes a circle), except under ``if TYPE_CHECKING:``."""
    for node in nodes:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _imports(node.orelse)
            continue
        if isinstance(node, ast.ImportFrom):
            yield node
        yield from _imports(ast.iter_child_nodes(node))


def _module_imports(name: str, path: Path) -> set[str]:
    """Package modules that ``name`` imports (relative imports, at the top level or
    deferred into a function; not those for type checkers)."""
    tree = ast.parse(path.read_text())
    pkg = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    out = set()
    for node in _imports(tree.body):
        if node.level:
            base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:
                sub = f"{mod}.{alias.name}" if mod else alias.name
                out.add(sub if sub in MODULES else mod)
    return {m for m in out if m in MODULES and m != name}


def test_no_import_circle():
    graph = {n: _module_imports(n, p) for n, p in MODULES.items() if n != "__init__"}
    state: dict[str, int] = {}

    def visit(n, path):
        if state.get(n) == 1:
            pytest.fail("import circle: " + " -> ".join([*path, n]))
        if state.get(n) == 2:
            return
        state[n] = 1
        for m in sorted(graph.get(n, ())):
            visit(m, [*path, n])
        state[n] = 2

    for n in sorted(graph):
        visit(n, [])
    assert "regularizer" not in graph["optim"] and "regularizer" not in graph["hooks"]


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"regularizer"}))
def test_no_private_regularizer_state(name):
    text = MODULES[name].read_text()
    assert not re.search(r"\b(reg|self\._reg|regularizer)\._(bindings|positions)\b", text)


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"penalties"}))
def test_no_branch_on_penalty_names(name):
    text = MODULES[name].read_text()
    hits = re.findall(r"(?:penalty|pen)\.name\s*(?:==|!=|in\b|not in\b)\s*[\"'(]", text)
    assert not hits, hits
