"""The shape the code keeps (docs/architecture.md): one-way imports without cycles, small core
modules, and imports inside functions only where a comment says why. The layers themselves are
import-linter contracts (pyproject.toml, run by `make test`)."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bot", "core", "notifications")
MAX_CORE_LINES = 400
MAX_FUNCTION_LINES = 60


def _sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_cycle_between_modules() -> None:
    graph = grimp.build_graph(*PACKAGES)  # every import statement, inside functions too
    edges = {m: set(graph.find_modules_directly_imported_by(m)) & graph.modules
             for m in graph.modules}
    # A package's __init__ importing its own modules is how packages work, not a cycle.
    for m in edges:
        edges[m] = {n for n in edges[m] if not m.startswith(n + ".")}
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _said_why(lines: list[str], at: int) -> bool:
    """A comment on the import's line or above it, within its block of imports."""
    while at >= 0:
        line = lines[at].strip()
        if "#" in line:
            return True
        if not line.startswith(("import ", "from ")):
            return False
        at -= 1
    return False


def test_imports_inside_functions_say_why() -> None:
    silent = []
    for path in _sources(*PACKAGES):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom) and not _said_why(
                        lines, inner.lineno - 1):
                    silent.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    assert silent == [], "an import inside a function needs a comment saying why"


def test_core_modules_are_small_and_long_functions_say_why() -> None:
    big, long_ = [], []
    for path in _sources("core"):
        lines = path.read_text().splitlines()
        name = str(path.relative_to(ROOT))
        if len(lines) > MAX_CORE_LINES:
            big.append(f"{name}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                body = lines[node.lineno - 1:node.end_lineno]
                if length > MAX_FUNCTION_LINES and not any("#" in line for line in body):
                    long_.append(f"{name}:{node.lineno} {node.name} ({length} lines)")
    assert big == [] and long_ == []


def test_handlers_build_no_queries() -> None:
    # Thin handlers: parse, one core call, replies. SQL lives in core, where it is typed strictly
    # and shared; a handler may hold the session (AsyncSession) and look a row up by its id.
    offenders = []
    for path in sorted((ROOT / "bot" / "handlers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and (
                    node.module.split(".")[0] in ("sqlalchemy", "sqlmodel")
                    and node.module != "sqlalchemy.ext.asyncio"):
                offenders.append(f"{path.name}:{node.lineno} from {node.module}")
            elif isinstance(node, ast.Import) and any(
                    a.name.split(".")[0] in ("sqlalchemy", "sqlmodel") for a in node.names):
                offenders.append(f"{path.name}:{node.lineno} import")
    assert not offenders, offenders


def test_no_test_module_imports_another() -> None:
    # What tests share lives in tests/support/ (tests/README.md): a test module imported by
    # another ties the two together, and a test or fixture it imports is collected again there.
    kinds = tuple(f"tests.{kind}" for kind in
                  ("unit", "integration", "journeys", "properties", "security"))
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[1] == "support" or path.name == "conftest.py":
            continue
        package = rel.parts[:-1]  # what `from .x import y` is relative to
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else ()
                imported = [".".join([*base, *([node.module] if node.module else [])])]
            else:
                continue
            offenders += [f"{rel}:{node.lineno} imports {name}" for name in imported
                          if name.startswith(tuple(f"{k}." for k in kinds)) or name in kinds]
    assert not offenders, ("what test modules share goes in tests/support/", offenders)
