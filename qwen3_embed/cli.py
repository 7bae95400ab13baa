"""The `qwen3-embed` command.

Core commands live here; `embed` (the Ray Data job) and `serve` (the Ray Serve app) are added by
`pipelines.cli` and `deployments.cli`, imported only when the command line names them so that
`qwen3-embed models` never starts Ray.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from . import __version__
from .registry import SEED_MODELS
from .vocabulary import FAMILIES

# command name -> module that provides add_parser(subparsers) and run(args) -> int
LAYER_COMMANDS = {
    "embed": "pipelines.cli",
    "rerank": "pipelines.rerank_cli",
    "serve": "deployments.cli",
}

# Wide enough that the README's `dimensions: 256` examples run against a tiny model offline.
TINY_TEXT_HIDDEN_SIZE = 256


def _cmd_models(args: argparse.Namespace) -> int:
    rows = [
        {
            "model": spec.model_id,
            "family": spec.family,
            "hidden_size": spec.hidden_size,
            "dims": f"{spec.min_dim}-{spec.hidden_size}",
            "max_length": spec.max_length,
        }
        for spec in SEED_MODELS.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'model':32} {'family':6} {'hidden':>6} {'dims':>9} {'max_len':>7}")
        for row in rows:
            print(
                f"{row['model']:32} {row['family']:6} {row['hidden_size']:>6} {row['dims']:>9} {row['max_length']:>7}"
            )
    return 0


def _cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from transformers.utils import logging as transformers_logging

    from .testing import make_tiny_model

    if args.family == "vl":
        kwargs = {"text_hidden_size": args.hidden_size or 128}
    else:
        kwargs = {
            "append_eos": not args.no_eos_postprocessor,
            "hidden_size": args.hidden_size or TINY_TEXT_HIDDEN_SIZE,
        }
    what, outputs = "model", "vectors"
    if args.task == "rerank":
        kwargs["task"] = "rerank"
        kwargs.pop("append_eos", None)  # a reranker's tokenizer is the base Qwen3 one
        what, outputs = "reranker (load it with qwen3_embed.Reranker)", "scores"
    # A one-shard, instant write: transformers' "Writing model shards" bar says nothing.
    transformers_logging.disable_progress_bar()
    directory = make_tiny_model(args.directory, family=args.family, **kwargs)
    print(
        f"wrote a tiny RANDOM-WEIGHT {args.family} {what} to {directory} (for smoke tests; its {outputs} mean nothing)"
    )
    return 0


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen3-embed", description="Qwen3 embeddings: batch jobs, serving, tools."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="list the known seed models")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(handler=_cmd_models)

    tiny = sub.add_parser(
        "make-tiny-model", help="write a tiny random-weight checkpoint for offline smoke tests"
    )
    tiny.add_argument("directory")
    tiny.add_argument("--family", choices=FAMILIES, default="text")
    tiny.add_argument(
        "--task",
        choices=("embed", "rerank"),
        default="embed",
        help="embed (an embedding model) or rerank (a Qwen3-Reranker-like checkpoint whose "
        "tokenizer holds yes / no)",
    )
    tiny.add_argument(
        "--no-eos-postprocessor",
        action="store_true",
        help="text only: a tokenizer without the <|endoftext|> post-processor (older hub revisions)",
    )
    tiny.add_argument(
        "--hidden-size",
        type=int,
        default=None,
        help=f"hidden size, the largest MRL dim (default: {TINY_TEXT_HIDDEN_SIZE} text, 128 vl; "
        "multiple of 4 for text, of 16 for vl)",
    )
    tiny.set_defaults(handler=_cmd_make_tiny_model)

    from . import doctor

    check = sub.add_parser(
        "doctor",
        help="what will run on this device (forward mode, attention kernel, versions) and "
        "self-checks that it is right; exits non-zero when a check fails",
    )
    doctor.add_arguments(check)
    check.set_defaults(handler=doctor.main)

    # Only import the Ray layers the command line asks for (or all of them for --help).
    wanted = [name for name in LAYER_COMMANDS if name in argv] or (
        list(LAYER_COMMANDS) if not argv or "-h" in argv or "--help" in argv else []
    )
    for name in wanted:
        module = importlib.import_module(LAYER_COMMANDS[name])
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    if args.command in LAYER_COMMANDS:
        from .stderr_filter import install

        install()  # before Ray starts any thread: keeps Ray Data's benign error line off stderr
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
