"""The layers of the package, checked: no module imports a higher layer, and no import
cycle exists between modules -- counting imports under ``if TYPE_CHECKING:`` and imports
deferred into functions, which is where cycles used to hide.

The layers (lowest first) are drawn in ``docs/architecture.md``; ``LAYERS`` below is the
same list. A new top-level module or package must be placed in it deliberately.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "blokrun"

#: Lowest first. Groups in one layer are independent of each other.
LAYERS: list[set[str]] = [
    {"blokrun.errors", "blokrun.types", "blokrun.redact", "blokrun.tracing"},
    {"blokrun.expressions"},
    {"blokrun.spec", "blokrun.datasources"},
    {"blokrun.execution", "blokrun.queues"},
    {"blokrun.persistence"},
    {"blokrun.lifecycle", "blokrun.config"},
    {"blokrun.driver"},
    {"blokrun.runner"},
    {"blokrun.workers"},
    {"blokrun.web", "blokrun.otel"},
    {"blokrun.cli", "blokrun"},
    {"blokrun.__main__"},
]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _group(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _imports() -> dict[str, set[str]]:
    """Module -> the blokrun modules it imports, anywhere in its body."""
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
                targets += [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target.startswith("blokrun") and target in modules and target != name:
                    graph[name].add(target)
        graph.setdefault(name, set())
    return graph


def _layer(group: str) -> int:
    for index, groups in enumerate(LAYERS):
        if group in groups:
            return index
    raise AssertionError(f"{group} is in no layer: place it in LAYERS and the docs")


def test_every_module_has_a_layer() -> None:
    for module in _imports():
        _layer(_group(module))


def test_no_module_imports_a_higher_layer_or_a_sibling_group() -> None:
    wrong = []
    for module, targets in _imports().items():
        mine = _group(module)
        for target in targets:
            theirs = _group(target)
            if theirs == mine or mine == "blokrun":  # the package facade may import anything
                continue
            if _layer(theirs) >= _layer(mine):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(sorted(wrong))


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_modules() -> None:
    cycles = []
    for component in _components(_imports()):
        # a package and the modules it re-exports are one unit, not a cycle
        real = [m for m in component if not any(o.startswith(m + ".") for o in component)]
        if len(real) > 1:
            cycles.append(sorted(component))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("blokrun.execution", "blokrun.persistence"),  # the executor knows nothing of storage
        ("blokrun.execution", "blokrun.datasources"),
        ("blokrun.spec", "blokrun.execution"),  # node resolution is injected
        ("blokrun.lifecycle", "blokrun.runner"),  # lifecycle works on the store
        ("blokrun.runner", "blokrun.workers"),  # workers are built on a Runner
    ],
)
def test_the_arrows_the_design_depends_on(module: str, forbidden: str) -> None:
    offenders = [
        f"{m} imports {t}"
        for m, targets in _imports().items()
        if _group(m) == module
        for t in targets
        if _group(t) == forbidden
    ]
    assert not offenders, "\n".join(offenders)
