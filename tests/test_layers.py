"""The package's layers, held by a test: arrows point one way and nothing imports in a circle.

Read with ``ast`` from the source, so a lazy import inside a function counts as much as one
at the top of a module: a layer that needs another only "sometimes" still depends on it.

    library (events, mixins, protocols, servers, clients, echo,
             proxyproto, forwarded)                              imports no other layer
    ipc                                                            imports nothing of ours
    http      -> library
    ops       -> ipc, http (the settings read the HTTP limits' defaults), the library
    runtime   -> library, http, ipc, ops
    cli, __main__ -> anything
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "pulsar_arbiter"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: Layer of each top-level name in the package, and what each layer may import.
LIBRARY = {
    "events",
    "mixins",
    "protocols",
    "servers",
    "clients",
    "echo",
    "proxyproto",
    "forwarded",
    "_core",  # which core is loaded (compiled or pure): imports nothing of ours
}
ALLOWED: dict[str, set[str]] = {
    "library": {"library"},
    "ipc": {"ipc"},
    "http": {"http", "library"},
    "ops": {"ops", "ipc", "http", "library"},
    "runtime": {"runtime", "ops", "ipc", "http", "library"},
    "entry": {"entry", "runtime", "ops", "ipc", "http", "library"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


MODULES = modules()


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "entry"  # the package's __init__ is the public API: it may gather anything
    top = parts[1]
    if top in LIBRARY:
        return "library"
    if top in ("cli", "__main__"):
        return "entry"
    assert top in ALLOWED, f"{module}: in no layer; add it to tests/test_layers.py"
    return top


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """Import nodes under ``if TYPE_CHECKING:``: annotations, not run."""
    guarded: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                guarded.update(ast.walk(child))
    return guarded


def imports(module: str, typing: bool = True) -> Iterator[tuple[str, int]]:
    """The package's modules that ``module`` imports, with the line of each import;
    ``typing=False`` leaves out those only made for the type checker."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    skip = set() if typing else _type_checking_only(tree)
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield _known(alias.name), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == PACKAGE:
                source = node.module
            else:
                continue
            for alias in node.names:
                target = f"{source}.{alias.name}"
                yield (target if target in MODULES else _known(source)), node.lineno


def _known(name: str) -> str:
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def test_every_module_is_in_a_layer() -> None:
    assert "pulsar_arbiter.protocols" in MODULES and "pulsar_arbiter.runtime.arbiter" in MODULES
    for module in MODULES:
        layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_arrows_point_one_way(module: str) -> None:
    mine = layer(module)
    wrong = [
        f"line {line}: {target} ({layer(target)})"
        for target, line in imports(module)
        if layer(target) not in ALLOWED[mine]
    ]
    assert not wrong, f"{module} ({mine}) may import only {sorted(ALLOWED[mine])}: {wrong}"


def test_no_import_cycle() -> None:
    """At run time; a module may name another's types for the checker (TYPE_CHECKING)
    when the two refer to each other, as a connection and its consumers do."""
    graph = {
        module: {t for t, _ in imports(module, typing=False) if t != module} for module in MODULES
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
