"""`qwen3-embed embed` (and `python -m pipelines.embed_corpus`): run the batch job from the shell.

Ray is imported only when the command runs, so `qwen3-embed --help` stays fast.

Exit codes: 0 done (rows that failed validation are in `_errors/`, not a job failure; also a
rerun that finds every input row already in OUTPUT and so starts no cluster);
2 the job was refused before it started (bad config, missing input, OUTPUT of another job);
3 the job ran but its counts do not add up (see the summary); 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from qwen3_embed.options import LoadOptions, ReplicaOptions, add_flags
from qwen3_embed.precision import PRECISIONS

from .config import INPUT_FORMATS, JobConfig

_IMPORTED_AT = time.monotonic()  # "imports" in the summary count from here (argument parsing on)

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_INCONSISTENT = 0, 1, 2, 3
DESCRIPTION = (
    "Embed a corpus (parquet, jsonl, csv, txt, image or video folders; local or URLs) into OUTPUT (parquet: id, "
    "embedding, num_tokens; plus _errors/ and _manifest.json). Rerun the same command to resume an "
    "interrupted job. Attaches to $RAY_ADDRESS / --address, else starts a local Ray cluster."
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the `embed` command to `qwen3-embed` (the entry point `embed` of the group
    `qwen3_embed.commands`, declared in pyproject.toml)."""
    parser = subparsers.add_parser(
        "embed",
        help="embed a corpus into a parquet dataset with a Ray Data job",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    """`run`, as a command runs it: Ray Data's benign error line kept off stderr."""
    from .stderr_filter import install

    install()  # before Ray starts any thread
    return run(args)


def _flag(parser: argparse.ArgumentParser, flag: str, field: str, **kwargs: Any) -> None:
    parser.add_argument(flag, dest=field, default=None, help=JobConfig.field_help(field), **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="INPUT... OUTPUT",
        help="one or more inputs (files, folders, globs, URLs), then the OUTPUT folder; "
        "both may come from --config instead",
    )
    parser.add_argument(
        "--config", metavar="JOB.yaml", help="YAML file with the same fields; flags override it"
    )
    # The model-loading and replica knobs: the core's flags, names, help and defaults.
    add_flags(parser, LoadOptions)
    add_flags(parser, ReplicaOptions)
    _flag(parser, "--dim", "dim", type=int, metavar="N")
    _flag(parser, "--instruction", "instruction", metavar="TEXT")
    _flag(parser, "--id-column", "id_column", metavar="NAME")
    _flag(parser, "--derived-ids", "derived_ids", action="store_true")
    _flag(parser, "--text-column", "text_column", metavar="NAME")
    _flag(parser, "--image-column", "image_column", metavar="NAME")
    _flag(parser, "--video-column", "video_column", metavar="NAME")
    _flag(parser, "--format", "format", choices=INPUT_FORMATS)
    _flag(parser, "--precision", "precision", choices=PRECISIONS)
    _flag(parser, "--calibration", "calibration", metavar="FILE")
    _flag(parser, "--calibration-rows", "calibration_rows", type=int, metavar="N")
    _flag(parser, "--batch-rows", "batch_rows", type=int, metavar="R")
    _flag(parser, "--rows-per-file", "rows_per_file", type=int, metavar="N")
    _flag(parser, "--truncate", "truncate", action=argparse.BooleanOptionalAction)
    _flag(parser, "--chunk-tokens", "chunk_tokens", type=int, metavar="N")
    _flag(parser, "--chunk-overlap", "chunk_overlap", type=int, metavar="K")
    _flag(parser, "--keep-columns", "keep_columns", metavar="A,B,C")
    parser.add_argument(
        "--storage-option",
        dest="storage_options",
        action="append",
        metavar="KEY=VALUE",
        help=JobConfig.field_help("storage_options") + "; repeatable",
    )
    _flag(parser, "--address", "ray_address", metavar="ADDR")
    _flag(parser, "--num-cpus", "num_cpus", type=int, metavar="N")
    _flag(parser, "--progress", "progress", action=argparse.BooleanOptionalAction)
    _flag(parser, "--ray-progress", "ray_progress", action="store_true")
    _flag(parser, "--progress-interval", "progress_interval_s", type=float, metavar="S")
    parser.add_argument(
        "--json", action="store_true", help="print the manifest as JSON instead of the summary"
    )


def config_from_args(args: argparse.Namespace) -> JobConfig:
    """Defaults < YAML file < flags."""
    overrides: dict[str, Any] = {
        name: getattr(args, name)
        for name in JobConfig.field_names()
        if name not in ("input", "output", "storage_options")
        and getattr(args, name, None) is not None
    }
    if args.paths:
        if len(args.paths) < 2:
            raise ValueError("give INPUT... and OUTPUT (or put both in --config)")
        overrides["input"] = tuple(args.paths[:-1])
        overrides["output"] = args.paths[-1]
    if args.storage_options:
        overrides["storage_options"] = _parse_storage_options(args.storage_options)
    if args.config:
        base = _load_yaml(args.config)
        if "storage_options" in overrides and isinstance(base.get("storage_options"), dict):
            overrides["storage_options"] = {
                **base["storage_options"],
                **overrides["storage_options"],
            }
        return JobConfig.from_mapping(base, **overrides)
    return JobConfig.from_mapping({}, **overrides)


def _load_yaml(path: str) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as handle:
        values = yaml.safe_load(handle) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a job config file must hold a mapping of field: value")
    return values


def _parse_storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--storage-option wants KEY=VALUE, got {pair!r}")
        options[key] = yaml.safe_load(value) if value else ""  # "true" -> True, "5" -> 5
    return options


def run(args: argparse.Namespace) -> int:
    from .noop import finish_if_nothing_to_do

    try:
        config = config_from_args(args)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"qwen3-embed embed: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    # Nothing left to do is decided first, before Ray, torch or the tokenizer are imported.
    looked = time.monotonic()
    result = finish_if_nothing_to_do(config, {"imports": looked - _IMPORTED_AT})
    if result is not None:
        print(json.dumps(result.manifest, indent=2) if args.json else result.summary())
        return EXIT_OK if result.consistent else EXIT_INCONSISTENT
    checked = time.monotonic()
    from .job import plan_job, run_embedding_job  # imports Ray

    imported = time.monotonic()
    try:
        plan = plan_job(config)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"qwen3-embed embed: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    phases = {
        "imports": looked - _IMPORTED_AT + imported - checked,
        "plan": checked - looked + time.monotonic() - imported,
    }
    result = run_embedding_job(plan, phases)
    print(json.dumps(result.manifest, indent=2) if args.json else result.summary())
    return EXIT_OK if result.consistent else EXIT_INCONSISTENT


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser)
    return run_command(parser.parse_args(argv))
