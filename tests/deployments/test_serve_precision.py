"""Compact answers on /v1/embeddings (vLLM's `embed_dtype` + `endianness`): float16 / bfloat16
through the official openai client's base64 (decoded with numpy), int8 / uint8 / binary /
ubinary equal to the core's quantisation of the float32 answer, and the refusals (400 before the
model is called). Rules: deployments/vector_encoding.py."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from serve_support import api_client, assert_openai_error, deployed_app

from deployments.vector_encoding import to_bfloat16_bits, vector_encoding
from qwen3_embed.precision import quantize

APP, PREFIX = "precision-app", "/precision"
TEXTS = ["hello world", "the quick brown fox jumps", "a"]


@pytest.fixture(scope="module")
def ranges(tiny_text_embedder) -> np.ndarray:
    from qwen3_embed.precision import calibration_ranges

    sample = [f"calibration text {n} " + "word " * n for n in range(20)]
    return calibration_ranges(tiny_text_embedder.embed(sample).embeddings.numpy())


@pytest.fixture(scope="module")
def served(ray_cluster, tiny_text_model_dir, ranges, tmp_path_factory):
    from deployments.cli import _calibration_ranges

    manifest = tmp_path_factory.mktemp("job") / "_manifest.json"
    manifest.write_text(json.dumps({"precision": {"name": "int8", "ranges": ranges.tolist()}}))
    config = {
        "models": [
            {
                "model": str(tiny_text_model_dir),
                "served_model_name": "tiny",
                "cpus_per_replica": 0.4,
                # what `qwen3-embed serve --calibration _manifest.json` puts in the config
                "calibration_ranges": _calibration_ranges(str(manifest)),
            },
            {
                "model": str(tiny_text_model_dir),
                "served_model_name": "plain",
                "cpus_per_replica": 0.3,
            },
        ],
        "ingress": {"cpus_per_replica": 0.1},
    }
    with deployed_app(config, APP, PREFIX) as base:
        yield base


def _float32(client, model="tiny") -> np.ndarray:
    response = client.post("/v1/embeddings", json={"model": model, "input": TEXTS})
    assert response.status_code == 200, response.text
    return np.asarray([row["embedding"] for row in response.json()["data"]], dtype=np.float32)


def test_float16_and_bfloat16_round_trip_through_the_openai_client(served):
    from openai import OpenAI

    openai = OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0, timeout=60)
    with api_client(served) as client:
        full = _float32(client)
    for dtype, endianness, decode in (
        ("float32", "big", lambda raw: np.frombuffer(raw, ">f4")),
        ("float16", None, lambda raw: np.frombuffer(raw, "<f2")),
        ("float16", "big", lambda raw: np.frombuffer(raw, ">f2")),
        (
            "bfloat16",
            None,
            lambda raw: (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32),
        ),
    ):
        extra = {"embed_dtype": dtype, **({"endianness": endianness} if endianness else {})}
        answer = openai.embeddings.create(
            model="tiny", input=TEXTS, encoding_format="base64", extra_body=extra
        )
        rows = np.stack([decode(base64.b64decode(item.embedding)) for item in answer.data])
        if dtype == "float16":
            assert np.array_equal(rows, full.astype(np.float16)), dtype
        elif dtype == "bfloat16":
            import torch

            expected = torch.from_numpy(full).to(torch.bfloat16).to(torch.float32).numpy()
            assert np.array_equal(rows, expected)
        else:
            assert np.array_equal(rows, full)
    # The client's own default (base64 asked and decoded as float32) is unchanged.
    plain = openai.embeddings.create(model="tiny", input=TEXTS)
    assert np.array_equal(np.asarray([d.embedding for d in plain.data], np.float32), full)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "binary", "ubinary"])
def test_quantised_answers_equal_the_core_rule(served, ranges, dtype):
    with api_client(served) as client:
        full = _float32(client)
        used = ranges if dtype in ("int8", "uint8") else None
        expected = quantize(full, dtype, used)
        response = client.post(
            "/v1/embeddings", json={"model": "tiny", "input": TEXTS, "embed_dtype": dtype}
        )
        assert response.status_code == 200, response.text
        rows = [row["embedding"] for row in response.json()["data"]]
        assert np.array_equal(np.asarray(rows), expected.astype(np.int64))
        response = client.post(
            "/v1/embeddings",
            json={
                "model": "tiny",
                "input": TEXTS,
                "embed_dtype": dtype,
                "encoding_format": "base64",
            },
        )
        raw = [base64.b64decode(row["embedding"]) for row in response.json()["data"]]
        decoded = np.stack([np.frombuffer(item, expected.dtype) for item in raw])
        assert np.array_equal(decoded, expected)
        assert len(raw[0]) == (64 if dtype in ("int8", "uint8") else 8)  # dim 64: 1 or 1/8 byte


def test_refusals(served):
    with api_client(served) as client:
        cases = [
            ({"model": "tiny", "embed_dtype": "float16"}, "embed_dtype", "needs encoding_format"),
            ({"model": "plain", "embed_dtype": "int8"}, "embed_dtype", "--calibration"),
            (
                {"model": "tiny", "embed_dtype": "uint8", "dimensions": 32},
                "dimensions",
                "dimensions=64",
            ),
            ({"model": "tiny", "embed_dtype": "fp8_e4m3"}, None, None),
            ({"model": "tiny", "endianness": "middle"}, None, None),
        ]
        for extra, param, words in cases:
            response = client.post("/v1/embeddings", json={"input": TEXTS, **extra})
            error = assert_openai_error(response, 400)
            if param is not None:
                assert error["param"] == param and words in error["message"], error


def test_bfloat16_bits_round_to_nearest_even():
    import torch

    values = np.random.default_rng(0).standard_normal((50, 64)).astype(np.float32)
    values[0, :4] = [1.0 + 2**-8, 1.0 + 3 * 2**-8, -0.0, 3.0e38]  # ties, sign, large
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(to_bfloat16_bits(values), expected)
    assert vector_encoding("base64", "bfloat16", "native", 64).byteorder in "<>"
