"""The seed models this project knows by name, with the facts the CLI and API validate against.

Models that are not listed here still load: their facts are read from their own `config.json`
(and sentence-transformers files), see `qwen3_embed.model_info`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .vocabulary import Family

WEB_SEARCH_INSTRUCTION = (
    "Given a web search query, retrieve relevant passages that answer the query"
)
VL_DEFAULT_SYSTEM_PROMPT = "Represent the user's input."


@dataclass(frozen=True)
class ModelSpec:
    """What we know about a published checkpoint without downloading it."""

    model_id: str
    family: Family
    hidden_size: int
    min_dim: int
    max_length: int
    default_query_instruction: str


SEED_MODELS: dict[str, ModelSpec] = {
    spec.model_id: spec
    for spec in (
        ModelSpec("Qwen/Qwen3-Embedding-0.6B", "text", 1024, 32, 8192, WEB_SEARCH_INSTRUCTION),
        ModelSpec("Qwen/Qwen3-Embedding-4B", "text", 2560, 32, 8192, WEB_SEARCH_INSTRUCTION),
        ModelSpec("Qwen/Qwen3-Embedding-8B", "text", 4096, 32, 8192, WEB_SEARCH_INSTRUCTION),
        ModelSpec("Qwen/Qwen3-VL-Embedding-2B", "vl", 2048, 64, 8192, WEB_SEARCH_INSTRUCTION),
        ModelSpec("Qwen/Qwen3-VL-Embedding-8B", "vl", 4096, 64, 8192, WEB_SEARCH_INSTRUCTION),
    )
}

# The published rerankers (`Reranker`), by hub id: family and default max_length (the official
# code's: 8192 for the text model card's block, 10240 for `qwen3_vl_reranker.py`).
SEED_RERANKERS: dict[str, tuple[Family, int]] = {
    "Qwen/Qwen3-Reranker-0.6B": ("text", 8192),
    "Qwen/Qwen3-Reranker-4B": ("text", 8192),
    "Qwen/Qwen3-Reranker-8B": ("text", 8192),
    "Qwen/Qwen3-VL-Reranker-2B": ("vl", 10240),
    "Qwen/Qwen3-VL-Reranker-8B": ("vl", 10240),
}

# Minimum MRL dimension per family, for models that are not seeds.
FAMILY_MIN_DIM: dict[Family, int] = {"text": 32, "vl": 64}
DEFAULT_MAX_LENGTH = 8192


def lookup(source: str) -> ModelSpec | None:
    """The seed spec for a hub id (case-insensitive), or None."""
    for model_id, spec in SEED_MODELS.items():
        if model_id.lower() == source.strip().lower():
            return spec
    return None


def lookup_task(source: str) -> str | None:
    """ "embed" or "rerank" for a published hub id (case-insensitive), else None."""
    key = source.strip().lower()
    if any(model_id.lower() == key for model_id in SEED_MODELS):
        return "embed"
    if any(model_id.lower() == key for model_id in SEED_RERANKERS):
        return "rerank"
    return None
