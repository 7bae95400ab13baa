"""`python -m pipelines.embed_corpus INPUT... OUTPUT --model M ...`: the same job as
`qwen3-embed embed`, for environments that run modules (e.g. `ray job submit -- python -m ...`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m pipelines.embed_corpus"))
