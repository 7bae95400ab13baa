"""Compact vectors (`qwen3_embed.precision`): each precision equals sentence-transformers'
`quantize_embeddings`, bit for bit, on the same vectors (and, for int8 / uint8, the same ranges);
`Embedder.embed(precision=...)` is that function applied to its own float32 vectors."""

from __future__ import annotations

import numpy as np
import pytest

from qwen3_embed.precision import (
    PRECISIONS,
    PrecisionSpec,
    bytes_per_vector,
    calibration_ranges,
    output_dtype,
    quantize,
    ranges_from_file,
)

st_quantization = pytest.importorskip("sentence_transformers.util.quantization")


def _unit_vectors(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    matrix = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


@pytest.mark.parametrize("precision", ["float32", "binary", "ubinary"])
@pytest.mark.parametrize("dim", [8, 12, 64, 1024])
def test_unranged_precisions_equal_sentence_transformers(precision, dim):
    vectors = _unit_vectors(37, dim)
    ours = quantize(vectors, precision)
    theirs = st_quantization.quantize_embeddings(vectors, precision)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)
    if precision != "float32":
        assert ours.shape == (37, -(-dim // 8))  # packed bits: dim / 8 bytes a row


@pytest.mark.parametrize("precision", ["int8", "uint8"])
@pytest.mark.parametrize("dim", [8, 64, 1024])
def test_scalar_precisions_equal_sentence_transformers_given_the_same_ranges(precision, dim):
    calibration = _unit_vectors(500, dim, seed=1)
    ranges = calibration_ranges(calibration)
    # Vectors inside the ranges (the calibration sample itself, and its per-dimension bounds)
    vectors = np.vstack([calibration[:50], ranges])
    ours = quantize(vectors, precision, ranges)
    theirs = st_quantization.quantize_embeddings(vectors, precision, ranges=ranges)
    assert ours.dtype == theirs.dtype == output_dtype(precision)
    assert np.array_equal(ours, theirs)
    # ... and sentence-transformers' own calibration path gives the same ranges.
    via_calibration = st_quantization.quantize_embeddings(
        vectors, precision, calibration_embeddings=calibration
    )
    assert np.array_equal(ours, via_calibration)
    low, high = (-128, 127) if precision == "int8" else (0, 255)
    assert ours.min() == low and ours.max() == high  # the bounds map to the ends


def test_float16_is_a_round_to_nearest_cast():
    vectors = _unit_vectors(5, 32)
    out = quantize(vectors, "float16")
    assert out.dtype == np.float16
    assert np.array_equal(out, vectors.astype(np.float16))


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_out_of_range_values_and_flat_dimensions_as_sentence_transformers(precision):
    ranges = np.array([[-0.5, 0.0, 0.2], [0.5, 1.0, 0.2]], dtype=np.float32)  # dim 2 is flat
    vectors = np.array([[-9.0, 9.0, 0.2], [9.0, -9.0, 5.0]], dtype=np.float32)
    ours = quantize(vectors, precision, ranges)
    assert np.array_equal(
        ours, st_quantization.quantize_embeddings(vectors, precision, ranges=ranges)
    )
    expected = [[0, 255, 0], [255, 0, 4]]  # saturated; the flat dimension in steps of 1
    assert ours.astype(int).tolist() == [
        [value - (128 if precision == "int8" else 0) for value in row] for row in expected
    ]


def test_bits_are_packed_per_row_when_dim_is_not_a_multiple_of_8():
    vectors = np.array([[1.0] * 9 + [-1.0] * 3, [-1.0] * 12], dtype=np.float32)
    out = quantize(vectors, "ubinary")
    assert out.shape == (2, 2)
    assert out.tolist() == [[0xFF, 0x80], [0, 0]]  # the 9th bit leads the second byte
    assert bytes_per_vector("ubinary", 12) == 2
    assert quantize(vectors, "binary").tolist() == [[127, 0], [-128, -128]]


def test_refusals_name_the_rule():
    vectors = _unit_vectors(3, 8)
    with pytest.raises(ValueError, match="valid values are: float32, float16, int8"):
        quantize(vectors, "int4")
    with pytest.raises(ValueError, match="needs ranges"):
        quantize(vectors, "int8")
    with pytest.raises(ValueError, match="int8 and uint8 only"):
        quantize(vectors, "binary", np.zeros((2, 8)))
    with pytest.raises(ValueError, match=r"shape \(2, 8\)"):
        quantize(vectors, "uint8", np.zeros((2, 7)))
    with pytest.raises(ValueError, match="min > max at dimension 3"):
        bad = np.zeros((2, 8), dtype=np.float32)
        bad[0, 3] = 1.0
        quantize(vectors, "uint8", bad)


def test_bytes_per_vector_for_each_precision():
    sizes = {precision: bytes_per_vector(precision, 1024) for precision in PRECISIONS}
    assert sizes == {
        "float32": 4096,
        "float16": 2048,
        "int8": 1024,
        "uint8": 1024,
        "binary": 128,
        "ubinary": 128,
    }


def test_ranges_round_trip_through_a_manifest_block_exactly():
    ranges = calibration_ranges(_unit_vectors(50, 16))
    spec = PrecisionSpec.of("int8", ranges)
    import json

    block = json.loads(json.dumps({"precision": spec.to_dict()}))
    loaded = ranges_from_file(block, "int8", 16)
    assert np.array_equal(loaded, ranges)  # float32 -> JSON double -> float32 is exact
    assert np.array_equal(ranges_from_file(block["precision"]["ranges"]), ranges)
    with pytest.raises(ValueError, match="holds 'int8' ranges, not 'uint8'"):
        ranges_from_file(block, "uint8")
    with pytest.raises(ValueError, match="no ranges"):
        ranges_from_file({"precision": {"name": "float32"}})


@pytest.mark.parametrize("precision", PRECISIONS)
def test_embed_with_precision_is_quantize_of_the_float32_vectors(tiny_text_embedder, precision):
    texts = ["the first text", "a second, longer text about something", "three"]
    full = tiny_text_embedder.embed(texts, dim=32).embeddings.numpy()
    ranges = calibration_ranges(full) if precision in ("int8", "uint8") else None
    output = tiny_text_embedder.embed(texts, dim=32, precision=precision, ranges=ranges)
    assert output.precision == precision
    if precision == "float16":  # not among sentence-transformers' precisions
        expected = full.astype(np.float16)
    else:
        expected = st_quantization.quantize_embeddings(full, precision, ranges=ranges)
    assert np.array_equal(output.embeddings.numpy(), expected)
    encoded = tiny_text_embedder.encode(texts, truncate_dim=32, precision=precision, ranges=ranges)
    assert np.array_equal(encoded, expected)


def test_embed_refuses_a_bad_precision_before_any_work(tiny_text_embedder):
    with pytest.raises(ValueError, match="needs ranges"):
        tiny_text_embedder.embed(["x"], precision="uint8")
    with pytest.raises(ValueError, match=r"shape \(2, 32\)"):
        tiny_text_embedder.embed(["x"], dim=32, precision="uint8", ranges=np.zeros((2, 64)))
