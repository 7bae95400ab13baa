"""Closed vocabularies are spelt once (issue 17 item 4): the core's Literals in
`qwen3_embed.vocabulary`; the batch rows' statuses, error codes and every schema in
`pipelines/rows.py`; docs/batch-job.md's error-code table is that table."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

import pytest

from pipelines import rows
from qwen3_embed import InputTooLargeForDeviceError, InputTooLongError
from qwen3_embed.errors import InputError
from qwen3_embed.model_info import ModelInfo
from qwen3_embed.options import LoadOptions
from qwen3_embed.vocabulary import (
    DTYPES,
    FAMILIES,
    FORWARD_MODES,
    INPUT_ERROR_CODES,
    POOLING_MODES,
    Family,
    PoolingMode,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_row_vocabulary_is_closed():
    assert set(rows.ROW_ERROR_CODES) == set(get_args(rows.RowErrorCode))
    assert rows.ROW_STATUSES == ("ok", "error", "skipped")
    constants = {name: value for name, value in vars(rows).items() if name.startswith("CODE_")}
    assert set(constants.values()) <= set(rows.ROW_ERROR_CODES), constants
    # A row the core refuses keeps the core's code, so the core's codes are row codes too.
    assert set(INPUT_ERROR_CODES) <= set(rows.ROW_ERROR_CODES)
    for error in (InputError("x"), InputTooLongError("x"), InputTooLargeForDeviceError("x")):
        assert error.code in INPUT_ERROR_CODES


def _layer_modules():
    for package in ("pipelines", "deployments", "qwen3_embed"):
        yield from sorted((REPO / package).rglob("*.py"))


def test_statuses_codes_and_row_schemas_are_defined_only_in_rows():
    offenders = []
    for path in _layer_modules():
        if path == REPO / "pipelines" / "rows.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name) and re.match(r"(STATUS|CODE)_[A-Z_]+$", name.id):
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {name.id}")
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", None) == "field"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in ("status", "code", "error", "id")
                and path.parts[-2] == "pipelines"
            ):
                offenders.append(
                    f"{path.relative_to(REPO)}:{node.lineno} pa.field({node.args[0].value!r})"
                )
    assert offenders == [], "define these in pipelines/rows.py: " + ", ".join(offenders)


def test_the_documented_error_code_table_is_the_row_table():
    readme = (REPO / "docs" / "batch-job.md").read_text(encoding="utf-8")
    table = readme.split("**Error codes** of `_errors/` rows", 1)[1].split("\n\n", 2)[1]
    listed = dict(re.findall(r"^\| `([a-z_]+)` \| (.+) \|$", table, flags=re.M))
    assert listed == rows.ROW_ERROR_CODES


def test_core_vocabularies_are_the_literals():
    assert FAMILIES == get_args(Family) == ("text", "vl")
    assert get_args(PoolingMode) == POOLING_MODES
    # The options' choices are the vocabulary's tuples, not copies of them.
    choices = {
        name: item.metadata["rule"].choices
        for name, item in LoadOptions.__dataclass_fields__.items()
    }
    assert choices["dtype"] is DTYPES and choices["forward_mode"] is FORWARD_MODES
    hints = ModelInfo.__annotations__
    assert hints["family"] == "Family" and hints["pooling_mode"] == "PoolingMode"


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_every_pooling_mode_pools(mode):
    torch = pytest.importorskip("torch")
    from qwen3_embed.pooling import pool

    hidden = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(hidden, mask, mode).shape == (2, 4)
