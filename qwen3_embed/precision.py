"""Compact vectors: the one quantisation rule every path uses (the core's `embed(precision=...)`,
the batch job's output column, `embed_dataset`, the Serve app's `embed_dtype`).

Precisions (`PRECISIONS`), each applied to the float32 vectors the model gives (after the
Matryoshka slice and L2-normalisation):

- `float32`: unchanged (4 bytes a value);
- `float16`: `astype(float16)`, round to nearest (2 bytes a value);
- `int8` / `uint8`: scalar quantisation with `ranges` (2, dim) = per-dimension (min, max) of a
  calibration sample: `steps = (max - min) / 255` (1 where max == min), bucket =
  `clip(floor((v - min) / steps), 0, 255)`, `- 128` for int8 (1 byte a value);
- `binary` / `ubinary`: one bit a value, `v > 0`, packed 8 to a byte per row, most significant
  bit first (`np.packbits(..., axis=-1)`): `ubinary` is the packed uint8, `binary` that byte
  `- 128` as int8 (ceil(dim / 8) bytes a vector).

These are sentence-transformers' rules (`sentence_transformers.util.quantization.
quantize_embeddings`, 6.x): the results equal its output bit for bit, given the same `ranges`
for int8 / uint8 (tests/core/test_precision.py holds them to it). Unlike its
`quantize_embeddings`, int8 / uint8 never compute ranges from the call's own vectors: that
would make every call's vectors incomparable, so ranges are required.

numpy only: the HTTP ingress imports this without torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

Precision = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
# Precisions that need per-dimension ranges (a calibration).
RANGED_PRECISIONS: tuple[Precision, ...] = ("int8", "uint8")

_DTYPES: dict[str, Any] = {
    "float32": np.float32,
    "float16": np.float16,
    "int8": np.int8,
    "uint8": np.uint8,
    "binary": np.int8,
    "ubinary": np.uint8,
}


def check_precision(precision: str) -> Precision:
    if precision not in PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; valid values are: {', '.join(PRECISIONS)}"
        )
    return precision  # type: ignore[return-value]


def output_dtype(precision: str) -> np.dtype:
    """numpy dtype of a quantised vector's values."""
    return np.dtype(_DTYPES[check_precision(precision)])


def output_width(precision: str, dim: int) -> int:
    """Values per quantised vector: `dim`, or ceil(dim / 8) packed bytes for the bit precisions."""
    check_precision(precision)
    return -(-dim // 8) if precision in ("binary", "ubinary") else dim


def bytes_per_vector(precision: str, dim: int) -> int:
    return output_width(precision, dim) * output_dtype(precision).itemsize


def calibration_ranges(vectors: np.ndarray) -> np.ndarray:
    """(2, dim) float32: per-dimension min and max of a calibration sample (N, dim), N >= 1."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(
            f"calibration needs an (N, dim) matrix with N >= 1, got shape {matrix.shape}"
        )
    if not np.isfinite(matrix).all():
        raise ValueError("calibration vectors contain NaN or infinite values")
    return np.vstack((matrix.min(axis=0), matrix.max(axis=0))).astype(np.float32)


def check_ranges(ranges: Any, dim: int) -> np.ndarray:
    """`ranges` as a (2, dim) float32 array, min <= max everywhere; a ValueError names the rule."""
    try:
        array = np.asarray(ranges, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"ranges must be numbers of shape (2, {dim}): {error}") from None
    if array.shape != (2, dim):
        raise ValueError(
            f"ranges must have shape (2, {dim}) (min per dimension, max per dimension) for "
            f"dim={dim}, got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError("ranges contain NaN or infinite values")
    if (array[0] > array[1]).any():
        bad = int(np.argmax(array[0] > array[1]))
        raise ValueError(
            f"ranges: min > max at dimension {bad} ({array[0, bad]} > {array[1, bad]})"
        )
    return array


def check_quantization(precision: str, ranges: Any, dim: int) -> np.ndarray | None:
    """Validate a (precision, ranges) pair for `dim`-wide vectors before any work is done;
    returns the ranges as a (2, dim) array (None when the precision takes none)."""
    precision = check_precision(precision)
    if precision in RANGED_PRECISIONS:
        if ranges is None:
            raise ValueError(
                f"precision {precision!r} needs ranges (2, dim): the min and max of each "
                "dimension over a calibration sample (`calibration_ranges`); a batch's own "
                "min and max would make every call's vectors incomparable"
            )
        return check_ranges(ranges, dim)
    if ranges is not None:
        raise ValueError(f"ranges apply to int8 and uint8 only, not to precision {precision!r}")
    return None


def quantize(vectors: Any, precision: str = "float32", ranges: Any = None) -> np.ndarray:
    """(N, dim) float vectors -> (N, output_width) in `precision` (see the module's rules).
    int8 / uint8 need `ranges` (2, dim); the other precisions refuse them (they would be
    ignored)."""
    precision = check_precision(precision)
    matrix = np.asarray(vectors)
    if matrix.ndim != 2:
        raise ValueError(f"expected an (N, dim) matrix of vectors, got shape {matrix.shape}")
    if matrix.dtype.kind != "f":
        raise ValueError(f"vectors to quantise must be floats, got {matrix.dtype}")
    checked = check_quantization(precision, ranges, matrix.shape[1])
    if checked is not None:
        return _scalar(matrix.astype(np.float32), checked, precision)
    if precision == "float32":
        return matrix.astype(np.float32)
    if precision == "float16":
        return matrix.astype(np.float16)
    packed = np.packbits(matrix > 0, axis=-1)  # (N, ceil(dim / 8)) uint8, per row
    if precision == "ubinary":
        return packed
    return (packed.astype(np.int16) - 128).astype(np.int8)


def _scalar(matrix: np.ndarray, ranges: np.ndarray, precision: str) -> np.ndarray:
    starts = ranges[0]
    steps = (ranges[1] - starts) / 255  # float32 throughout, as sentence-transformers computes
    steps = np.where(steps == 0, np.float32(1), steps)  # a flat dimension: no division by 0
    # Values outside the ranges saturate at the end buckets.
    buckets = np.clip(np.floor((matrix - starts) / steps), 0, 255)
    if precision == "uint8":
        return buckets.astype(np.uint8)
    return (buckets - 128).astype(np.int8)


@dataclass(frozen=True)
class PrecisionSpec:
    """A precision and, for int8 / uint8, its ranges: what a job's manifest records as
    `"precision": {"name": ..., "ranges": [[min...], [max...]]}`."""

    name: Precision = "float32"
    ranges: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def __post_init__(self) -> None:
        check_precision(self.name)
        if self.ranges is not None and self.name not in RANGED_PRECISIONS:
            raise ValueError(f"ranges apply to int8 and uint8 only, not to {self.name!r}")

    @classmethod
    def of(cls, name: str, ranges: Any = None) -> PrecisionSpec:
        if ranges is None:
            return cls(check_precision(name))
        array = np.asarray(ranges, dtype=np.float32)
        return cls(
            check_precision(name),
            (tuple(map(float, array[0])), tuple(map(float, array[1]))),
        )

    @property
    def ranges_array(self) -> np.ndarray | None:
        return None if self.ranges is None else np.asarray(self.ranges, dtype=np.float32)

    def quantize(self, vectors: Any) -> np.ndarray:
        return quantize(vectors, self.name, self.ranges_array)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.ranges is not None:
            out["ranges"] = [list(self.ranges[0]), list(self.ranges[1])]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> PrecisionSpec:
        return cls.of(value["name"], value.get("ranges"))


def ranges_from_file(data: Any, precision: str | None = None, dim: int | None = None) -> np.ndarray:
    """(2, dim) ranges from a calibration file's parsed JSON: a job's `_manifest.json` (its
    `precision.ranges`), a `{"ranges": ...}` object or a bare `[[min...], [max...]]` list.
    `precision`, when given, must match the manifest's; `dim`, when given, the ranges' width."""
    if isinstance(data, Mapping):
        block = data.get("precision", data)
        if isinstance(block, Mapping):
            named = block.get("name")
            if precision is not None and named is not None and named != precision:
                raise ValueError(
                    f"the calibration file holds {named!r} ranges, not {precision!r} ones"
                )
            data = block.get("ranges")
        if data is None:
            raise ValueError(
                "the calibration file has no ranges (expected a job's _manifest.json with "
                'precision.ranges, {"ranges": [[min...], [max...]]} or [[min...], [max...]])'
            )
    if not isinstance(data, Sequence) or len(data) != 2:
        raise ValueError(
            "calibration ranges must be two lists: [[min per dim...], [max per dim...]]"
        )
    width = dim if dim is not None else len(data[0])
    return check_ranges(data, width)
