"""The `qwen3-embed` command.

Core commands live here (`models`, `make-tiny-model`, `doctor`). The layers above add theirs
(the batch jobs, the server) through the entry-point group `qwen3_embed.commands`
(`qwen3_embed.plugins`): a layer is imported only when the command line names one of its
commands (or for --help), so `qwen3-embed models` never imports Ray, and the core names no layer.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .plugins import COMMANDS, LayerNotInstalledError, load, registered
from .registry import SEED_MODELS
from .vocabulary import FAMILIES

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


class _Parser(argparse.ArgumentParser):
    """Adds `note` to its usage errors (e.g. why a layer's command is not a valid choice)."""

    note = ""

    def error(self, message: str) -> NoReturn:
        super().error(f"{message}\n{self.note}" if self.note else message)


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = _Parser(
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

    # Only import the layers whose commands the command line names (or all of them for --help).
    layers = registered(COMMANDS)
    wanted = [name for name in layers if name in argv] or (
        list(layers) if argv_is_help(argv) else []
    )
    for name in wanted:
        try:
            add_parser = load(layers[name])
        except LayerNotInstalledError as error:
            if name in argv:
                raise  # the command asked for cannot run: main() says why
            sub.add_parser(name, help=f"(not available: {error})")  # --help says why
            continue
        add_parser(sub)
    if not layers:
        parser.note = parser.epilog = (
            f"No layer commands are installed (the entry-point group {COMMANDS!r} is empty): "
            "the batch jobs and the server come with an install of the project "
            "(`pip install qwen3-embed`, or `pip install -e .` in a checkout)."
        )
    return parser


def argv_is_help(argv: Sequence[str]) -> bool:
    return not argv or "-h" in argv or "--help" in argv


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
    except LayerNotInstalledError as error:
        print(f"qwen3-embed: error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
