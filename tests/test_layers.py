"""Layers point one way: stream -> engines -> model, stream -> model. Checked on every import
statement, including those inside functions (the lazy ones), so a new upward import fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> top-level modules it must never import
FORBIDDEN = {
    "model": {"stream", "engines", "asyncio", "aiomqtt", "paho", "amqtt"},
    "engines": {"stream", "aiomqtt", "paho", "amqtt"},
}


def imported_roots(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_up(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports {root}"
        for path in files
        for line, root in imported_roots(path)
        if root in FORBIDDEN[package]
    ]
    assert upward == []


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from stream.messages import Utterance\n    import asyncio\n")
    assert imported_roots(module) == [(2, "stream"), (3, "asyncio")]
