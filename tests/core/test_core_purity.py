"""The core is the bottom floor: no module of `qwen3_embed/` imports Ray, pydantic, FastAPI /
Starlette or a layer when it is imported, and none names a layer's module in a string (a
dependency that `importlib` would hide from an import graph). Read from the source with `ast`,
never by importing it, so a lazy import inside a function stays allowed and nothing here
depends on what happens to be installed."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "qwen3_embed"
# Top-level import names the core may not import at import time: the layers' dependencies and
# the layers themselves.
FORBIDDEN = frozenset(
    {"ray", "pydantic", "fastapi", "starlette", "pipelines", "deployments", "qwen3_embed_layers"}
)
# A layer's module path in a string: `pipelines.cli`, `deployments.app:build_app`, ...
LAYER_PATH = re.compile(r"\b(?:pipelines|deployments)[.:][A-Za-z_]|\bqwen3_embed_layers\b")


def core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def import_time_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements that run when the module is imported: its top level, the bodies of its
    `if` / `try` / `with` / loops, and class bodies; not the bodies of functions."""
    for node in body:
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for field in ("body", "handlers", "orelse", "finalbody", "cases"):
            for item in getattr(node, field, None) or ():
                if isinstance(item, (ast.ExceptHandler, ast.match_case)):
                    yield from import_time_statements(item.body)
                elif isinstance(item, ast.stmt):
                    yield from import_time_statements([item])


def forbidden_imports(tree: ast.Module) -> list[str]:
    found = []
    for node in import_time_statements(tree.body):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [
            f"line {node.lineno}: imports {name}"
            for name in names
            if name.split(".")[0] in FORBIDDEN
        ]
    return found


def layer_paths_in_strings(tree: ast.Module) -> list[str]:
    return [
        f"line {node.lineno}: names a layer's module in {node.value[:60]!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and LAYER_PATH.search(node.value)
    ]


def test_the_core_has_modules_to_check():
    assert len(core_files()) > 30, core_files()


@pytest.mark.parametrize("path", core_files(), ids=lambda path: str(path.relative_to(CORE)))
def test_core_module_is_free_of_the_floors_above(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    problems = forbidden_imports(tree) + layer_paths_in_strings(tree)
    assert not problems, f"{path.relative_to(CORE.parent)}: " + "; ".join(problems)


def test_the_checks_catch_what_they_look_for():
    """The walk sees imports nested in `if` / `try` / classes, skips functions' bodies, and finds
    layer paths in any string (f-strings included)."""
    source = (
        "import os\n"
        "try:\n    import ray.data\nexcept ImportError:\n    from pydantic import BaseModel\n"
        "if True:\n    from fastapi import FastAPI\nelse:\n    import starlette\n"
        "class C:\n    import deployments.app\n"
        "def lazy():\n    import ray\n    from pipelines import cli\n"
        "LOADER = 'pipelines.cli'\n"
        "def f(x):\n    return f'{x} deployments.app:build_app'\n"
        "NOTE = 'the pipelines and deployments layers'\n"
    )
    tree = ast.parse(source)
    assert [problem.split(": ")[1] for problem in forbidden_imports(tree)] == [
        "imports ray.data",
        "imports pydantic",
        "imports fastapi",
        "imports starlette",
        "imports deployments.app",
    ]
    assert [problem.split(":")[0] for problem in layer_paths_in_strings(tree)] == [
        "line 15",
        "line 17",
    ]
