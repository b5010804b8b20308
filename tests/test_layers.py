"""The shape of `proxy/` (docs/design.md): layers that only import downwards, no cycles, small
modules, a short root. Every import counts, including those under TYPE_CHECKING and inside
functions: a lazy import is still a dependency a reader has to follow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "proxy"

# Lowest first. A module may import from its own layer or any layer below, never above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("proxy", "proxy.errors", "proxy.exitcodes", "proxy.log", "proxy.lifecycle", "proxy.reporting"),
    ("proxy.metrics", "proxy.identity", "proxy.config", "proxy.credentials"),
    ("proxy.transport",),
    ("proxy.upstream",),
    ("proxy.web",),
    ("proxy.signing",),
    ("proxy.forwarding", "proxy.vending"),
    ("proxy.reloading",),
    ("proxy.app",),
    ("proxy.admin", "proxy.server"),
    ("proxy.commands", "proxy.sandbox"),
    ("proxy.cli", "proxy.__main__"),
)
MAX_ROOT_MODULES = 13
MAX_LINES = 350


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The proxy modules `name` imports, resolved to modules (not the names inside them)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for named in targets:
            module = named
            while module and module not in MODULES:
                module = module.rpartition(".")[0]
            if module and module != name:
                found.add(module)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    best, depth = -1, -1
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = index, len(prefix)
    return best


def test_every_module_has_a_layer() -> None:
    assert [name for name in MODULES if _layer(name) < 0] == []


def test_imports_only_go_down_the_layers() -> None:
    upward = [
        f"{name} (layer {_layer(name)}) imports {target} (layer {_layer(target)})"
        for name, targets in GRAPH.items()
        for target in sorted(targets)
        if _layer(target) > _layer(name)
    ]
    assert upward == []


def test_there_is_no_import_cycle() -> None:
    # Tarjan's strongly connected components; a component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert cycles == [], cycles


def test_the_root_holds_at_most_thirteen_modules() -> None:
    root = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(root) <= MAX_ROOT_MODULES, root


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_350_lines(name: str) -> None:
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{name}: {lines} lines"
