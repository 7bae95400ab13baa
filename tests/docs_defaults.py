"""docs/defaults.md: every batch-job, rerank-job, Dataset-stage and serve option with its
default, generated from the config classes' own fields (pydantic `model_fields`), so that no
default is restated by hand. `tests/test_docs_defaults.py` fails when the page differs from what
this renders; regenerate it with

    python tests/docs_defaults.py --write
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the checkout's packages, not an installed copy

PAGE = REPO / "docs" / "defaults.md"
COMMAND = "python tests/docs_defaults.py --write"


def _flags(command: str) -> dict[str, str]:
    """Field name -> the command's visible flag for it, from the real argument parser."""
    from qwen3_embed.cli import build_parser

    parser = build_parser([command])._subparsers._group_actions[0].choices[command]
    flags: dict[str, str] = {}
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings:
            continue
        long = [option for option in action.option_strings if option.startswith("--")]
        if long and action.dest != "help":
            flags.setdefault(action.dest, long[0])
    return flags


def _default(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list) and not value:
        return "[]"
    return f"`{value}`"


def _is_config(field: Any) -> bool:
    from pydantic import BaseModel

    annotation = field.annotation
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _rows(config: type, prefix: str, flags: dict[str, str] | None) -> list[str]:
    rows = []
    for name, field in config.model_fields.items():
        if _is_config(field):
            continue  # its own table
        flag = f"`{flags[name]}`" if flags and name in flags else ""
        meaning = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{prefix}{name}` | {flag} | {_default(field)} | {meaning} |")
    return rows


def _table(
    title: str, config: type, prefix: str = "", flags: dict[str, str] | None = None
) -> list[str]:
    source = f"{config.__module__}.{config.__qualname__}"
    return [
        f"## {title}",
        "",
        f"From `{source}`.",
        "",
        "| field (YAML key) | flag | default | meaning |",
        "|---|---|---|---|",
        *_rows(config, prefix, flags),
        "",
    ]


def render() -> str:
    from deployments.config import (
        AuthConfig,
        BatchingConfig,
        IngressConfig,
        MediaPolicy,
        ModelConfig,
        RequestLimits,
    )
    from pipelines.config import JobConfig
    from pipelines.dataset_stage import EmbedStageConfig
    from pipelines.rerank_config import RerankJobConfig

    embed, rerank, serve = _flags("embed"), _flags("rerank"), _flags("serve")
    lines = [
        "# Option defaults",
        "",
        "Generated from the config classes' fields by `tests/docs_defaults.py` (do not edit by",
        f"hand: `{COMMAND}` rewrites it; `tests/test_docs_defaults.py` fails when it differs).",
        "A flag is shown where the command has one for the field; `none` means the field is",
        "unset and its meaning says what applies then. What each option does in context:",
        "[batch-job.md](batch-job.md), [rerank.md](rerank.md), [serving.md](serving.md); every",
        "limit: [limits.md](limits.md).",
        "",
        *_table("`qwen3-embed embed` (JobConfig)", JobConfig, flags=embed),
        *_table("`qwen3-embed rerank` (RerankJobConfig)", RerankJobConfig, flags=rerank),
        *_table("`embed_dataset` (EmbedStageConfig)", EmbedStageConfig),
        *_table(
            "`qwen3-embed serve`: each model (ModelConfig, `models[]`)", ModelConfig, flags=serve
        ),
        *_table(
            "`qwen3-embed serve`: batching (`models[].batching`)",
            BatchingConfig,
            "batching.",
            serve,
        ),
        *_table("`qwen3-embed serve`: request limits (`limits`)", RequestLimits, "limits."),
        *_table("`qwen3-embed serve`: media (`media`)", MediaPolicy, "media.", serve),
        *_table("`qwen3-embed serve`: API keys (`auth`)", AuthConfig, "auth.", serve),
        *_table("`qwen3-embed serve`: ingress (`ingress`)", IngressConfig, "ingress."),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {PAGE.relative_to(REPO)}")
    args = parser.parse_args()
    text = render()
    if args.write:
        PAGE.write_text(text)
        print(f"wrote {PAGE.relative_to(REPO)}")
        return 0
    if PAGE.read_text() != text:
        print(f"{PAGE.relative_to(REPO)} is out of date: run `{COMMAND}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
