"""qwen3_embed: the one core for Qwen3-Embedding and Qwen3-VL-Embedding, and their rerankers.

Model loading, input formatting, batching, pooling and Matryoshka truncation live here and only
here; the Ray Data pipeline (`pipelines`) and the Ray Serve app (`deployments`) call into it.
This package never imports Ray, and importing it does not import torch until a name that needs
it is used (so light processes, like an HTTP ingress, can use the errors and the registry).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    DecodeLimitError,
    DimensionError,
    InputError,
    InputTooLargeForDeviceError,
    InputTooLongError,
    MissingExtraError,
    UnsupportedModelError,
)
from .options import DEFAULT_MAX_BATCH_TOKENS, LoadOptions, ReplicaOptions
from .registry import SEED_MODELS, ModelSpec

if TYPE_CHECKING:
    from .chunking import Chunk, chunk_text
    from .contracts import PreparedInput
    from .embedder import Embedder, EmbeddingOutput
    from .preparer import Preparer
    from .rerank.preparer import RerankPreparer
    from .reranker import Reranker, RerankOutput
    from .vl.media import MediaOptions

# name -> module that defines it, imported on first use (PEP 562)
_LAZY = {
    "Chunk": ".chunking",
    "chunk_text": ".chunking",
    "PreparedInput": ".contracts",
    "Embedder": ".embedder",
    "EmbeddingOutput": ".embedder",
    "Preparer": ".preparer",
    "Reranker": ".reranker",
    "RerankOutput": ".reranker",
    "RerankPreparer": ".rerank.preparer",
    "MediaOptions": ".vl.media",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MAX_BATCH_TOKENS",
    "Chunk",
    "SEED_MODELS",
    "DecodeLimitError",
    "DimensionError",
    "Embedder",
    "EmbeddingOutput",
    "InputError",
    "InputTooLargeForDeviceError",
    "InputTooLongError",
    "LoadOptions",
    "MediaOptions",
    "MissingExtraError",
    "ModelSpec",
    "PreparedInput",
    "Preparer",
    "ReplicaOptions",
    "RerankOutput",
    "RerankPreparer",
    "Reranker",
    "UnsupportedModelError",
    "chunk_text",
]
__version__ = "0.1.0"
