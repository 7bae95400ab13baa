"""No default is restated by hand: docs/defaults.md is what `tests/docs_defaults.py` renders from
the config classes' fields, and the options tables of docs/batch-job.md and docs/serving.md
give, for every flag, the default that the config field (or, for a flag no config field backs,
the argument parser) really has."""

from __future__ import annotations

import argparse
import re

import pytest
from docs_defaults import COMMAND, PAGE, REPO, render
from pydantic_core import PydanticUndefined

from qwen3_embed.cli import build_parser


def test_the_defaults_page_is_generated_from_the_configs():
    assert PAGE.read_text() == render(), f"docs/defaults.md is out of date: run `{COMMAND}`"


def _configs(command: str) -> list[type]:
    from deployments.config import AuthConfig, BatchingConfig, MediaPolicy, ModelConfig
    from pipelines.config import JobConfig

    return {"embed": [JobConfig], "serve": [ModelConfig, BatchingConfig, AuthConfig, MediaPolicy]}[
        command
    ]


def _true_defaults(command: str) -> dict[str, object]:
    """Flag -> its default: the config field's where one backs the flag, else the parser's.
    Unset (None), required and boolean defaults are left out: the tables word those."""
    fields = {}
    for config in _configs(command):
        for name, field in config.model_fields.items():
            if field.default_factory is None and field.default is not PydanticUndefined:
                fields.setdefault(name, field.default)
    parser = build_parser([command])._subparsers._group_actions[0].choices[command]
    defaults = {}
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or action.dest == "help":
            continue
        value = fields.get(action.dest, action.default)
        if value is None or isinstance(value, bool) or value in ((), []):
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                defaults[option] = value
    return defaults


def _spelt(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _table_rows(command: str) -> list[tuple[list[str], str]]:
    page = {"embed": "batch-job.md", "serve": "serving.md"}[command]
    text = (REPO / "docs" / page).read_text()
    table = text.split(f"**`qwen3-embed {command}` options**", 1)[1].split("\n\n", 2)[1]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        flags = [flag for flag in re.findall(r"`(--[a-z][a-z0-9-]*)", cells[0])]
        rows.append((flags, cells[1]))
    return rows


@pytest.mark.parametrize("command", ["embed", "serve"])
def test_the_options_tables_give_the_real_defaults(command):
    defaults = _true_defaults(command)
    wrong = []
    checked = 0
    for flags, cell in _table_rows(command):
        parts = cell.split(" / ")
        if len(parts) != len(flags):
            parts = [cell] * len(flags)
        for flag, part in zip(flags, parts, strict=True):
            if flag not in defaults:
                continue
            value = _spelt(defaults[flag])
            checked += 1
            if not re.search(rf"(?<![\w.]){re.escape(value)}(?![\w.])", part):
                wrong.append(f"{flag}: the table says {part!r}, the default is {value!r}")
    assert wrong == []
    assert checked >= 10  # the check reads the tables (not an empty match)
