"""The package layout holds: no import cycles (lazy imports included), small modules, short
functions in the services, and the emulator independent of the pool and the gateway."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "trinity"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
SHORT_FUNCTIONS_IN = ("trinity.pool", "trinity.gateway")
PENDING_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for n in ast.walk(node))
    return out


def _imports(name: str) -> Iterator[str]:
    """Every trinity module ``name`` imports at run time, at module level or inside a function."""
    tree = TREES[name]
    skip = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if (found := _resolve(target)) is not None and found != name:
                yield found


GRAPH = {name: set(_imports(name)) for name in MODULES}


def _cycles() -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    cycles = _cycles()
    new = [sorted(c) for c in cycles if c not in PENDING_CYCLES]
    assert not new, f"import cycles (a lazy import does not break one): {new}"
    fixed = [sorted(c) for c in PENDING_CYCLES if c not in cycles]
    assert not fixed, f"no longer a cycle: remove it from PENDING_CYCLES: {fixed}"


def test_modules_stay_small() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    big = {n: s for n, s in sizes.items() if s > MAX_MODULE_LINES and not n.startswith("trinity.engine")}
    assert not big, f"modules over {MAX_MODULE_LINES} lines; split them: {big}"


def test_service_functions_stay_short() -> None:
    long = []
    for name, tree in TREES.items():
        if not name.startswith(SHORT_FUNCTIONS_IN):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{MODULES[name]}:{node.lineno} {node.name} ({size} lines)")
    assert not long, long


def test_the_emulator_needs_neither_the_pool_nor_the_gateway() -> None:
    seen, todo = set(), [n for n in MODULES if n.startswith("trinity.emulator")]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(GRAPH[name])
    assert not {n for n in seen if n.startswith(("trinity.pool", "trinity.gateway"))}
