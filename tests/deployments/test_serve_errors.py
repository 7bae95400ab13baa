"""The API's errors (deployments/errors.py): validation errors name their fields, in OpenAI's
shape and status.

Named `test_serve_errors` beside the core's `qwen3_embed/errors.py` tests."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.errors import validation_error
from deployments.schemas import EmbeddingRequest


def test_validation_error_names_fields():
    with pytest.raises(ValidationError) as info:
        EmbeddingRequest.model_validate({"input": "a", "dimensions": "x", "extra": 1})
    error = validation_error(info.value.errors())
    # 400 (as OpenAI), not FastAPI's 422; the code is OpenAI's for the first error
    assert (error.status, error.param, error.code) == (400, "dimensions", "invalid_type")
    assert error.type == "invalid_request_error"
    assert "dimensions" in error.message and "extra" in error.message
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(ValidationError) as info:
        EmbeddingRequest.model_validate({"input": "a", "extra": 1})
    assert validation_error(info.value.errors()).code == "unknown_parameter"
    with pytest.raises(ValidationError) as info:
        EmbeddingRequest.model_validate_json(b'{"input": ')
    assert validation_error(info.value.errors()).code == "invalid_json"
