"""qwen3_embed: the one core for Qwen3-Embedding and Qwen3-VL-Embedding.

Model loading, input formatting, batching, pooling and Matryoshka truncation live here and only
here; the Ray Data pipeline (`pipelines`) and the Ray Serve app (`deployments`) call into it.
This package never imports Ray.
"""

from .backend import PreparedInput
from .embedder import DEFAULT_MAX_BATCH_TOKENS, Embedder, EmbeddingOutput
from .errors import (
    DimensionError,
    InputError,
    InputTooLongError,
    MissingExtraError,
    UnsupportedModelError,
)
from .preparer import Preparer
from .registry import SEED_MODELS, ModelSpec
from .vl.media import MediaOptions

__all__ = [
    "DEFAULT_MAX_BATCH_TOKENS",
    "SEED_MODELS",
    "DimensionError",
    "Embedder",
    "EmbeddingOutput",
    "InputError",
    "InputTooLongError",
    "MediaOptions",
    "MissingExtraError",
    "ModelSpec",
    "PreparedInput",
    "Preparer",
    "UnsupportedModelError",
]
__version__ = "0.1.0"
