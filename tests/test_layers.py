"""The shape of `proxy/` (docs/design.md section 1): layers that only import downwards, no
cycles, a few declared edges forbidden even within a layer, small modules, a short root.

Every import counts: those under TYPE_CHECKING, inside functions, and dynamic ones
(`__import__("proxy.x")`, `importlib.import_module("proxy.x")`). A dynamic import whose target
is not a string literal is itself a failure, since no reader (and no checker) can follow it.

Every package and every root module is given its layer in `LAYERS`, by name: a new one that is
not in the table fails `test_every_package_and_root_module_has_a_layer` instead of landing in
some default layer. Modules inside a package take the package's layer.

The checker is a set of functions over a package folder, so each rule is also run against a
synthetic package in a tmp folder with a planted violation, proving the rule can fail.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "proxy"

# The one table: every package and root module of `proxy/`, with its layer (lowest first).
# A module may import from its own layer or any layer below, never above. `proxy` is the
# package's own `__init__` (the version) and covers nothing else.
LAYERS: dict[str, int] = {
    # 0. Vocabulary
    "proxy": 0,
    "proxy.errors": 0,
    "proxy.exitcodes": 0,
    "proxy.log": 0,
    "proxy.lifecycle": 0,
    "proxy.reporting": 0,
    # 1. Facts
    "proxy.metrics": 1,
    "proxy.identity": 1,
    "proxy.config": 1,
    "proxy.credentials": 1,
    "proxy.telemetry": 1,
    # 2. Transport
    "proxy.transport": 2,
    # 3. Upstream
    "proxy.upstream": 3,
    # 4. Web edge
    "proxy.web": 4,
    # 5. JWT mode
    "proxy.signing": 5,
    # 6. Flows
    "proxy.forwarding": 6,
    "proxy.vending": 6,
    # 7. Reload wiring
    "proxy.reloading": 7,
    # 8. Composition
    "proxy.app": 8,
    # 9. Processes
    "proxy.admin": 9,
    "proxy.server": 9,
    # 10. Commands and the simulator
    "proxy.commands": 10,
    "proxy.sandbox": 10,
    # 11. Entry
    "proxy.cli": 11,
    "proxy.__main__": 11,
}
# Edges forbidden although the layers would allow them: the two flow packages stay apart.
FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("proxy.forwarding", "proxy.vending"),
    ("proxy.vending", "proxy.forwarding"),
)
# Packages that may import only what is listed (besides themselves): the simulator stands for
# Gini and must not lean on the proxy it is used to test (docs/design.md, `commands/`).
CONFINED: dict[str, tuple[str, ...]] = {
    "proxy.sandbox": (),
}
MAX_ROOT_MODULES = 13
MAX_LINES = 350


def discover(package: Path) -> dict[str, Path]:
    """Every module of the package folder, by dotted name (a package by its `__init__`)."""
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _importlib_names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """The names under which this file binds the `importlib` module and `import_module`."""
    modules, functions = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {
                alias.asname or alias.name for alias in node.names if alias.name == "importlib"
            }
        elif isinstance(node, ast.ImportFrom) and node.module == "importlib":
            functions |= {
                alias.asname or alias.name for alias in node.names if alias.name == "import_module"
            }
    return modules, functions


def _dynamic_target(node: ast.Call, modules: set[str], functions: set[str]) -> ast.expr | None:
    """The argument naming the module, when `node` is a dynamic import; else None."""
    func = node.func
    dynamic = (
        (isinstance(func, ast.Name) and func.id in {"__import__", *functions})
        or (isinstance(func, ast.Attribute) and func.attr == "__import__")
        or (
            isinstance(func, ast.Attribute)
            and func.attr == "import_module"
            and isinstance(func.value, ast.Name)
            and func.value.id in modules
        )
    )
    if not dynamic:
        return None
    if node.args:
        return node.args[0]
    named = [kw.value for kw in node.keywords if kw.arg == "name"]
    return named[0] if named else ast.Constant(value=None)


def _static_targets(node: ast.AST, package: str) -> list[str]:
    """The dotted names an `import` / `from ... import` statement names, made absolute."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        return [f"{base}.{alias.name}" for alias in node.names] + [base]
    return []


def imports(name: str, path: Path, modules: Mapping[str, Path]) -> tuple[set[str], list[str]]:
    """The package's modules that `name` imports (resolved to modules, not the names inside
    them), and the dynamic imports it makes that cannot be followed."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    root = name.partition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    importlib_modules, import_module_names = _importlib_names(tree)
    found: set[str] = set()
    opaque: list[str] = []
    for node in ast.walk(tree):
        targets = _static_targets(node, package)
        argument, line = None, getattr(node, "lineno", 0)
        if isinstance(node, ast.Call):
            argument = _dynamic_target(node, importlib_modules, import_module_names)
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            if argument.value.startswith("."):
                opaque.append(f"{name}:{line}: relative dynamic import")
            targets = [argument.value]
        elif argument is not None:
            opaque.append(f"{name}:{line}: dynamic import of a computed name")
        for named in targets:
            if named != root and not named.startswith(root + "."):
                continue
            module = named
            while module and module not in modules:
                module = module.rpartition(".")[0]
            if module and module != name:
                found.add(module)
    return found, opaque


def graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    return {name: imports(name, path, modules)[0] for name, path in modules.items()}


def layer_of(module: str, layers: Mapping[str, int]) -> int | None:
    """The module's layer: its own entry, else the entry of the package (below the root) that
    holds it. The root package's entry covers only the root `__init__`."""
    parts = module.split(".")
    for depth in range(len(parts), 1, -1):
        prefix = ".".join(parts[:depth])
        if prefix in layers:
            return layers[prefix]
    return layers.get(module)


def unassigned(modules: Mapping[str, Path], layers: Mapping[str, int]) -> list[str]:
    return sorted(name for name in modules if layer_of(name, layers) is None)


def upward(edges: Mapping[str, set[str]], layers: Mapping[str, int]) -> list[str]:
    found = []
    for name, targets in sorted(edges.items()):
        for target in sorted(targets):
            own, theirs = layer_of(name, layers), layer_of(target, layers)
            if own is not None and theirs is not None and theirs > own:
                found.append(f"{name} (layer {own}) imports {target} (layer {theirs})")
    return found


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def forbidden(
    edges: Mapping[str, set[str]],
    banned: tuple[tuple[str, str], ...],
    confined: Mapping[str, tuple[str, ...]],
) -> list[str]:
    found = []
    for name, targets in sorted(edges.items()):
        for target in sorted(targets):
            found += [
                f"{name} imports {target} ({source} may not import {dest})"
                for source, dest in banned
                if _within(name, source) and _within(target, dest)
            ]
            for fence, allowed in confined.items():
                if _within(name, fence) and not any(
                    _within(target, ok) for ok in (fence, *allowed)
                ):
                    found.append(f"{name} imports {target} ({fence} may import only {allowed})")
    return found


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components; a component of more than one module is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges.get(node, ())):
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
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def root_modules(package: Path) -> list[str]:
    return sorted(p.stem for p in package.glob("*.py") if p.stem not in ("__init__", "__main__"))


def too_long(modules: Mapping[str, Path], limit: int) -> list[str]:
    counts = {name: path.read_text(encoding="utf-8").count("\n") for name, path in modules.items()}
    return [f"{name}: {lines} lines" for name, lines in sorted(counts.items()) if lines > limit]


MODULES = discover(PACKAGE)
GRAPH = graph(MODULES)


# --- the real package ------------------------------------------------------------------------


def test_every_package_and_root_module_has_a_layer() -> None:
    assert unassigned(MODULES, LAYERS) == []


def test_imports_only_go_down_the_layers() -> None:
    assert upward(GRAPH, LAYERS) == []


def test_every_dynamic_import_names_its_module() -> None:
    assert [problem for n, p in MODULES.items() for problem in imports(n, p, MODULES)[1]] == []


def test_no_forbidden_edge_within_a_layer() -> None:
    assert forbidden(GRAPH, FORBIDDEN, CONFINED) == []


def test_there_is_no_import_cycle() -> None:
    assert cycles(GRAPH) == []


def test_the_root_holds_at_most_twelve_modules() -> None:
    root = root_modules(PACKAGE)
    assert len(root) <= MAX_ROOT_MODULES, root


def test_no_module_is_over_350_lines() -> None:
    assert too_long(MODULES, MAX_LINES) == []


# --- planted violations: each rule fails on a synthetic package ------------------------------


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    """A minimal `proxy` package in tmp_path with the given extra files (path -> source)."""
    package = tmp_path / "proxy"
    base = {
        "__init__.py": "",
        "errors.py": "",
        "upstream.py": "from proxy import errors\n",
        "app.py": "import proxy.upstream\n",
        "forwarding/__init__.py": "",
        "forwarding/handler.py": "from ..upstream import x\n",
        "vending/__init__.py": "",
        "vending/gini.py": "from proxy.upstream import x\n",
        "sandbox/__init__.py": "",
        "sandbox/server.py": "from proxy.sandbox import state\n",
        "sandbox/state.py": "",
    }
    for relative, source in {**base, **files}.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return package


def _problems(package: Path) -> list[str]:
    modules = discover(package)
    edges = graph(modules)
    opaque = [problem for n, p in modules.items() for problem in imports(n, p, modules)[1]]
    return [
        *unassigned(modules, LAYERS),
        *upward(edges, LAYERS),
        *opaque,
        *forbidden(edges, FORBIDDEN, CONFINED),
        *(" -> ".join(cycle) for cycle in cycles(edges)),
    ]


def test_the_synthetic_package_is_clean(tmp_path: Path) -> None:
    # The baseline every planted test changes by one file: without the plant, no problem.
    assert _problems(_plant(tmp_path, {})) == []


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("newpackage/__init__.py", "proxy.newpackage"),
        ("newpackage/inner.py", "proxy.newpackage.inner"),
        ("newmodule.py", "proxy.newmodule"),
    ],
)
def test_a_package_or_root_module_without_a_layer_fails(
    tmp_path: Path, relative: str, expected: str
) -> None:
    package = _plant(tmp_path, {relative: ""})
    assert expected in unassigned(discover(package), LAYERS)
    # ...while a new module inside a package that has a layer takes the package's layer.
    inside = _plant(tmp_path / "other", {"vending/new.py": "", "vending/more/__init__.py": ""})
    assert unassigned(discover(inside), LAYERS) == []


@pytest.mark.parametrize(
    "source",
    [
        "from proxy import app\n",
        "import proxy.app\n",
        "from . import app\n",
        "def later():\n    from proxy.app import build\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from proxy.app import X\n",
        "__import__('proxy.app')\n",
        "import builtins\nbuiltins.__import__('proxy.app.inner')\n",
        "import importlib\nimportlib.import_module('proxy.app')\n",
        "import importlib as il\nil.import_module(name='proxy.app')\n",
        "from importlib import import_module as load\nload('proxy.app')\n",
    ],
)
def test_an_upward_import_fails_however_it_is_written(tmp_path: Path, source: str) -> None:
    modules = discover(_plant(tmp_path, {"errors.py": source}))
    assert upward(graph(modules), LAYERS) == ["proxy.errors (layer 0) imports proxy.app (layer 8)"]


@pytest.mark.parametrize(
    "source",
    [
        "__import__('proxy.' + 'app')\n",
        "import importlib\nname = 'proxy.app'\nimportlib.import_module(name)\n",
        "from importlib import import_module\nimport_module(f'proxy.{1}')\n",
        "from importlib import import_module\nimport_module('.app', 'proxy')\n",
        "import importlib\nimportlib.import_module()\n",
    ],
)
def test_a_dynamic_import_of_a_computed_name_fails(tmp_path: Path, source: str) -> None:
    package = _plant(tmp_path, {"errors.py": source})
    modules = discover(package)
    assert imports("proxy.errors", modules["proxy.errors"], modules)[1] != []


def test_a_cycle_fails_even_through_lazy_and_type_only_imports(tmp_path: Path) -> None:
    package = _plant(
        tmp_path,
        {
            "errors.py": "def f():\n    from proxy import log\n",
            "log.py": "import typing\nif typing.TYPE_CHECKING:\n    import proxy.errors\n",
        },
    )
    assert cycles(graph(discover(package))) == [["proxy.errors", "proxy.log"]]


@pytest.mark.parametrize(
    ("relative", "source", "expected"),
    [
        ("forwarding/handler.py", "from proxy.vending import gini\n", "proxy.forwarding.handler"),
        ("vending/gini.py", "import proxy.forwarding\n", "proxy.vending.gini"),
        ("vending/gini.py", "__import__('proxy.forwarding.handler')\n", "proxy.vending.gini"),
    ],
)
def test_the_flow_packages_importing_each_other_fails(
    tmp_path: Path, relative: str, source: str, expected: str
) -> None:
    modules = discover(_plant(tmp_path, {relative: source}))
    edges = graph(modules)
    assert upward(edges, LAYERS) == []  # same layer: only the declared ban catches it
    found = forbidden(edges, FORBIDDEN, CONFINED)
    assert found != []
    assert {problem.split(" imports ")[0] for problem in found} == {expected}


@pytest.mark.parametrize(
    "source",
    [
        "from proxy import errors\n",  # below it: allowed by the layers, not by the fence
        "from proxy import __version__\n",  # the root package itself
        "import proxy.app\n",
        "from .. import app\n",
        "def later():\n    import importlib\n    importlib.import_module('proxy.upstream')\n",
    ],
)
def test_the_simulator_importing_the_proxy_fails(tmp_path: Path, source: str) -> None:
    modules = discover(_plant(tmp_path, {"sandbox/server.py": source}))
    found = forbidden(graph(modules), FORBIDDEN, CONFINED)
    assert found != []
    assert {problem.split(" imports ")[0] for problem in found} == {"proxy.sandbox.server"}


def test_too_many_root_modules_or_lines_fail(tmp_path: Path) -> None:
    package = _plant(tmp_path, {f"extra{n}.py": "" for n in range(MAX_ROOT_MODULES)})
    assert len(root_modules(package)) > MAX_ROOT_MODULES
    package = _plant(tmp_path, {"errors.py": "x = 1\n" * (MAX_LINES + 1)})
    assert too_long(discover(package), MAX_LINES) == [f"proxy.errors: {MAX_LINES + 1} lines"]
