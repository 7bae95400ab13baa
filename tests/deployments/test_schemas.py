"""The API's request and response schemas (deployments/schemas.py): strict request fields,
base64 embeddings as little-endian float32."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from pydantic import ValidationError

from deployments.schemas import EmbeddingRequest, embeddings_response


# ------------------------------------------------------------------------ schemas / errors
def test_request_schema_is_strict():
    assert EmbeddingRequest.model_validate({"input": "a"}).truncate is False
    for body in (
        {"input": 5},
        {"input": "a", "dimensions": "64"},
        {"input": "a", "dimensions": 64.5},
        {"input": "a", "encoding_format": "int8"},
        {"input": "a", "truncate": "yes"},
        {"input": "a", "instrucion": "typo"},
        {"input": "a", "truncation_side": "left"},
        {"input": "a", "truncate_prompt_tokens": "5"},
    ):
        with pytest.raises(ValidationError):
            EmbeddingRequest.model_validate(body)
    # `input` may be missing in the schema (the chat form sends `messages`); chat_form decides.
    assert EmbeddingRequest.model_validate({}).input is None


def test_base64_encoding_is_little_endian_float32():
    vectors = np.array([[1.5, -2.0, 3.25], [0.0, 1e-8, -7.0]], dtype=np.float32)
    body = embeddings_response("m", vectors, 7, "base64")
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(row["embedding"]), dtype="<f4") for row in body["data"]]
    )
    np.testing.assert_array_equal(decoded, vectors)
    floats = embeddings_response("m", vectors, 7, "float")
    assert floats["data"][1]["embedding"] == vectors[1].tolist()
    assert floats["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [row["index"] for row in floats["data"]] == [0, 1]
