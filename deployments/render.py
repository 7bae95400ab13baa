"""The embeddings response body, rendered straight from the (N, dim) float32 matrix.

orjson writes numpy rows without building Python float lists (`row.tolist()` + `json.dumps` was
most of the response cost for large answers). Float rows are widened to float64 first, so each
number is the same shortest round-trip decimal `json.dumps(row.tolist())` wrote before (orjson
spells exponents `1e-8` where `json` wrote `1e-08`: the same number to any JSON parser). base64
rows are slices of one contiguous little-endian float32 buffer, not one conversion per row.
"""

from __future__ import annotations

import base64

import numpy as np
import orjson

from .vector_encoding import VectorEncoding, encode_rows

# Above this many numbers the ingress renders off the event loop (it keeps serving meanwhile);
# below, a thread hop costs more than the rendering.
INLINE_RENDER_MAX_VALUES = 65_536


def render_embeddings(
    model: str, vectors: np.ndarray, total_tokens: int, encoding_format: str | VectorEncoding
) -> bytes:
    """The OpenAI embeddings response as JSON bytes; as `schemas.embeddings_response` describes
    it. Non-finite values are refused (ValueError -> 500), as `json.dumps(allow_nan=False)` did,
    rather than written as null. A `VectorEncoding` other than float32 little-endian (vLLM's
    `embed_dtype` / `endianness`) writes each vector by `vector_encoding.encode_rows`."""
    matrix = np.asarray(vectors)
    if matrix.ndim != 2:
        raise ValueError(f"expected an (N, dim) matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("the embeddings contain NaN or infinite values")
    embeddings: list[object]
    if isinstance(encoding_format, VectorEncoding):
        if not encoding_format.plain:
            return _render(model, encode_rows(matrix, encoding_format), total_tokens)
        encoding_format = encoding_format.encoding_format
    if encoding_format == "base64":
        buffer = memoryview(np.ascontiguousarray(matrix, dtype="<f4")).cast("B")
        row_bytes = matrix.shape[1] * 4
        embeddings = [
            base64.b64encode(buffer[start : start + row_bytes]).decode("ascii")
            for start in range(0, len(buffer), row_bytes)
        ]
    else:
        embeddings = list(np.ascontiguousarray(matrix, dtype=np.float64))  # rows: views
    return _render(model, embeddings, total_tokens)


def _render(model: str, embeddings: list[object], total_tokens: int) -> bytes:
    payload = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": embedding}
            for index, embedding in enumerate(embeddings)
        ],
        "model": model,
        "usage": {"prompt_tokens": total_tokens, "total_tokens": total_tokens},
    }
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
