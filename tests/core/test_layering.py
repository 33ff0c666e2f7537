"""The architecture, checked: the core is pure; pyroute2 stays in net/, quart/hypercorn in web/."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "engarde"


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def modules(sub: str = "") -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


def test_core_imports_no_io_framework() -> None:
    for path in modules("core"):
        bad = imports_of(path) & {"trio", "pyroute2", "quart", "quart_trio", "hypercorn", "socket"}
        assert not bad, f"{path.name} imports {bad}"


def test_pyroute2_only_in_net() -> None:
    for path in modules():
        if "pyroute2" in imports_of(path):
            assert path.parent.name == "net", path


def test_web_frameworks_only_in_web() -> None:
    for path in modules():
        if imports_of(path) & {"quart", "quart_trio", "hypercorn", "prometheus_client"}:
            assert path.parent.name == "web", path


def test_hot_loops_do_not_await_per_datagram() -> None:
    """Inside each *_loop's `for _ in range(BATCH)` body there is no await."""
    checked = 0
    for path in modules("net"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.AsyncFunctionDef) and fn.name.endswith("_loop"):
                for node in ast.walk(fn):
                    if isinstance(node, ast.For) and "BATCH" in ast.unparse(node.iter):
                        awaits = [n for n in ast.walk(node) if isinstance(n, ast.Await)]
                        body_awaits = [a for a in awaits if a not in _else_nodes(node)]
                        assert not body_awaits, f"{path.name}:{fn.name} awaits per datagram"
                        checked += 1
    assert checked >= 4


def _else_nodes(node: ast.For) -> set[ast.AST]:
    return {n for stmt in node.orelse for n in ast.walk(stmt)}
