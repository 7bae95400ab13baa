"""`qwen3-embed rerank INPUT... OUTPUT --model M`: the rerank batch job from the shell.

Exit codes as `qwen3-embed embed`: 0 done (pairs that failed are in `_errors/`), 2 refused before
it started (bad flags, missing input or columns, not a reranker, OUTPUT of another job), 3 the
counts do not add up (see the summary), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from qwen3_embed.options import LoadOptions, ReplicaOptions, add_flags

from .cli import EXIT_INCONSISTENT, EXIT_OK, EXIT_REFUSED, _parse_storage_options

DESCRIPTION = (
    "Score (query, document) pairs of a table (parquet, jsonl, csv) with a Qwen3 reranker (text "
    "pairs; Qwen3-VL: also images and video, given as objects) into "
    "OUTPUT (parquet: query_id, document_id, score, rank, num_tokens; plus _errors/ and "
    "_manifest.json). A row holds one pair, or a query and a list of candidates. Rerun the same "
    "command to resume. Attaches to $RAY_ADDRESS / --address, else starts a local Ray cluster."
)


def _config_class() -> Any:
    from .rerank_config import RerankJobConfig  # pydantic; only when the command runs

    return RerankJobConfig


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the `rerank` command to `qwen3-embed` (the entry point `rerank` of the group
    `qwen3_embed.commands`, declared in pyproject.toml)."""
    parser = subparsers.add_parser(
        "rerank",
        help="rerank (query, document) pairs of a table with a Ray Data job",
        description=DESCRIPTION,
    )
    parser.add_argument("paths", nargs="+", metavar="INPUT... OUTPUT", help="inputs, then OUTPUT")
    add_flags(parser, LoadOptions)
    add_flags(parser, ReplicaOptions)
    flags = (
        ("--query-column", "query_column", {"metavar": "NAME"}),
        ("--document-column", "document_column", {"metavar": "NAME"}),
        ("--query-id-column", "query_id_column", {"metavar": "NAME"}),
        ("--document-id-column", "document_id_column", {"metavar": "NAME"}),
        ("--instruction", "instruction", {"metavar": "TEXT"}),
        ("--top-n", "top_n", {"type": int, "metavar": "N"}),
        ("--truncate", "truncate", {"action": argparse.BooleanOptionalAction}),
        ("--format", "format", {"choices": ("auto", "parquet", "jsonl", "csv")}),
        ("--batch-rows", "batch_rows", {"type": int, "metavar": "Q"}),
        ("--rows-per-file", "rows_per_file", {"type": int, "metavar": "Q"}),
        ("--address", "ray_address", {"metavar": "ADDR"}),
        ("--num-cpus", "num_cpus", {"type": int, "metavar": "N"}),
        ("--progress", "progress", {"action": argparse.BooleanOptionalAction}),
    )
    for flag, field, kwargs in flags:
        parser.add_argument(flag, dest=field, default=None, help=_HELP.get(field), **kwargs)
    parser.add_argument(
        "--storage-option",
        dest="storage_options",
        action="append",
        metavar="KEY=VALUE",
        help="options for non-local filesystems (as for embed); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    parser.set_defaults(handler=run_command)
    return parser


# Help without importing Ray (RerankJobConfig's descriptions, kept short here).
_HELP = {
    "query_column": "column holding the query: a text, or (VL) an object with text, image, "
    "video, fps, max_frames (default: query)",
    "document_column": "column holding the candidate: one text or object per row, or a list of "
    "them per row (default: document)",
    "query_id_column": "column of query ids (default: query_id when present, else derived from "
    "the query text)",
    "document_id_column": "column of document ids (default: document_id or doc_id when present, "
    "else the position in the row's list, or derived from the text for pairs)",
    "instruction": "the reranker's task instruction (default: the model's own)",
    "top_n": "write only the best N documents of each query (default: all)",
    "truncate": "truncate over-long pairs with the official rule (default: on); off: error rows",
    "format": "input format (default: auto, from each file's extension)",
    "batch_rows": "queries per replica call (default: 64)",
    "rows_per_file": "queries per output file, at least (default: 1024)",
    "ray_address": "Ray cluster to attach to (default: $RAY_ADDRESS, else a local one)",
    "num_cpus": "CPUs of a local cluster started by the job",
    "progress": "show Ray Data's progress bars (default: on)",
}


def run_command(args: argparse.Namespace) -> int:
    """`run`, as the command runs it: Ray Data's benign error line kept off stderr."""
    from .stderr_filter import install

    install()  # before Ray starts any thread
    return run(args)


def run(args: argparse.Namespace) -> int:
    try:
        config_class = _config_class()
        if len(args.paths) < 2:
            raise ValueError("give INPUT... and OUTPUT")
        values: dict[str, Any] = {
            name: getattr(args, name)
            for name in config_class.model_fields
            if name not in ("input", "output", "storage_options")
            and getattr(args, name, None) is not None
        }
        if args.storage_options:
            values["storage_options"] = _parse_storage_options(args.storage_options)
        config = config_class(input=tuple(args.paths[:-1]), output=args.paths[-1], **values)
        from .rerank_job import plan_rerank_job, run_rerank_job
        from .rerank_output import format_rerank_summary

        plan = plan_rerank_job(config)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"qwen3-embed rerank: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    manifest = run_rerank_job(plan)
    print(json.dumps(manifest, indent=2) if args.json else format_rerank_summary(manifest))
    return EXIT_OK if manifest["consistent"] else EXIT_INCONSISTENT
