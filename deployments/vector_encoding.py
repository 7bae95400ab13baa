"""How a /v1/embeddings answer writes its vectors: `encoding_format`, `embed_dtype`, `endianness`.

The request shape is vLLM's (`embed_dtype` + `endianness` beside OpenAI's `encoding_format`):

- `embed_dtype` float32 (default), float16, bfloat16: the values in that dtype; with
  `encoding_format: base64` each vector is the base64 of its raw bytes in `endianness` order
  (`little`, the default and what the OpenAI client decodes; `big`; `native`, the server's).
  With `encoding_format: float` only float32 is allowed (a JSON number is not a float16).
- `embed_dtype` int8, uint8, binary, ubinary (Cohere's `embedding_types` names, and
  sentence-transformers' precisions): the core's quantisation (`qwen3_embed.precision`);
  JSON integer lists with `encoding_format: float`, base64 of the bytes (1 a value, or
  ceil(dim / 8) packed bytes for binary / ubinary) with `base64`. int8 / uint8 need the
  model's calibration ranges (`qwen3-embed serve --calibration FILE`, a batch job's
  `_manifest.json`), for the `dimensions` they were computed at.

Every refusal is a 400 before the model is called, naming the field and its valid values.
"""

from __future__ import annotations

import base64
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from qwen3_embed.precision import RANGED_PRECISIONS, quantize

from .errors import ApiError

FLOAT_DTYPES = ("float32", "float16", "bfloat16")
QUANTIZED_DTYPES = ("int8", "uint8", "binary", "ubinary")
EMBED_DTYPES = (*FLOAT_DTYPES, *QUANTIZED_DTYPES)
ENDIANNESS = ("native", "big", "little")


@dataclass(frozen=True)
class VectorEncoding:
    encoding_format: str = "float"  # float | base64
    embed_dtype: str = "float32"
    endianness: str = "little"
    ranges: np.ndarray | None = None  # int8 / uint8: (2, dim)

    @property
    def plain(self) -> bool:
        """OpenAI's own encodings (float32 numbers, or base64 of little-endian float32)."""
        return self.embed_dtype == "float32" and self.byteorder == "<"

    @property
    def byteorder(self) -> str:
        order = {"little": "<", "big": ">"}.get(self.endianness)
        if order is None:  # native
            order = "<" if sys.byteorder == "little" else ">"
        return order


def vector_encoding(
    encoding_format: str | None,
    embed_dtype: str | None,
    endianness: str | None,
    dimensions: int,
    ranges: Any = None,
) -> VectorEncoding:
    """The request's encoding, checked; ApiError 400 naming the field otherwise. `dimensions`
    is the width of the answer's vectors; `ranges` the served model's calibration, if any."""
    fmt = encoding_format or "float"
    dtype = embed_dtype or "float32"
    order = endianness or "little"
    if dtype not in EMBED_DTYPES:  # the schema's Literal catches it first; kept for direct use
        raise _bad("embed_dtype", f"valid values are: {', '.join(EMBED_DTYPES)}")
    if order not in ENDIANNESS:
        raise _bad("endianness", f"valid values are: {', '.join(ENDIANNESS)}")
    if fmt == "float" and dtype in FLOAT_DTYPES[1:]:
        raise _bad(
            "embed_dtype",
            f"embed_dtype {dtype!r} needs encoding_format 'base64' (JSON numbers are float32)",
        )
    checked = None
    if dtype in RANGED_PRECISIONS:
        if ranges is None:
            raise _bad(
                "embed_dtype",
                f"embed_dtype {dtype!r} needs calibration ranges, and this model has none "
                "(start the server with --calibration FILE, e.g. a batch job's _manifest.json)",
            )
        checked = np.asarray(ranges, dtype=np.float32)
        if checked.shape[1] != dimensions:
            raise _bad(
                "dimensions",
                f"this model's {dtype} calibration ranges are for dimensions="
                f"{checked.shape[1]}, not {dimensions}",
            )
    return VectorEncoding(fmt, dtype, order, checked)


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, code="invalid_value", param=param)


def encode_rows(matrix: np.ndarray, encoding: VectorEncoding) -> list[Any]:
    """(N, dim) float32 vectors -> the answer's `embedding` values, one per row."""
    dtype = encoding.embed_dtype
    if dtype in QUANTIZED_DTYPES:
        values = quantize(matrix, dtype, encoding.ranges)
        if encoding.encoding_format == "float":
            return values.astype(np.int64).tolist()
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in values]
    if dtype == "bfloat16":
        raw = to_bfloat16_bits(matrix).astype(f"{encoding.byteorder}u2")
    else:
        raw = np.ascontiguousarray(matrix, dtype=f"{encoding.byteorder}{_CODES[dtype]}")
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in raw]


_CODES = {"float32": "f4", "float16": "f2"}


def to_bfloat16_bits(matrix: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest, ties to even (as torch's
    `.to(torch.bfloat16)`); the values are finite (the renderer refuses others)."""
    bits = np.ascontiguousarray(matrix, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)
