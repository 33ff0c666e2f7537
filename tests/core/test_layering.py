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


def test_hot_handlers_are_plain_functions_that_drain_a_batch() -> None:
    """The data path runs in the pump thread: each *_handler returns a plain (not async)
    function that drains at most a batch; no await can hide in it, no trio call either."""
    checked = 0
    for path in modules("net"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.FunctionDef) and fn.name.endswith("_handler"):
                defs = (ast.FunctionDef, ast.AsyncFunctionDef)
                inner = [n for n in fn.body if isinstance(n, defs)]
                drains = [n for n in inner if any(
                    isinstance(f, ast.For) and "batch" in ast.unparse(f.iter) for f in ast.walk(n)
                )]  # fmt: skip
                if not drains:
                    continue
                for drain in drains:
                    assert isinstance(drain, ast.FunctionDef), f"{path.name}:{fn.name} is async"
                    assert "trio" not in ast.unparse(drain), f"{path.name}:{fn.name} uses trio"
                    checked += 1
    assert checked >= 4
