"""Request and response bodies of the OpenAI-compatible API.

The request schema checks JSON types only (422 when they are wrong); what an item may contain is
checked by `inputs` and the core (400), so a type error and a content error stay distinguishable.
Unknown fields are refused (422): a misspelt `instrucion` must not silently embed documents as
queries.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from .protocol import ModelDescription


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: StrictStr | list[Any] = Field(
        ...,
        description=(
            "a string, or a list of strings (VL models: also objects {text, image, video, "
            "instruction, fps, max_frames}; text, image and video may each be a list)"
        ),
    )
    model: StrictStr | None = Field(
        None, description="served model name; may be omitted when one model is served"
    )
    dimensions: StrictInt | None = Field(
        None, description="Matryoshka output size (model's min_dim .. hidden_size)"
    )
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="float (default) or base64 of little-endian float32"
    )
    user: StrictStr | None = Field(None, description="accepted for compatibility, ignored")
    instruction: StrictStr | None = Field(
        None, description="query instruction (extension); omit for documents"
    )
    truncate: StrictBool = Field(
        False, description="truncate over-long inputs instead of answering 413 (extension)"
    )


# OpenAI's error body, as every error answer of the API has it (deployments.errors.ApiError).
ERROR_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERROR_STATUSES = {
    "400": "invalid input",
    "401": "missing or invalid API key",
    "404": "unknown model",
    "413": "request, input or media too large",
    "422": "body is not JSON or does not match the schema",
    "429": "a queue is full (Retry-After)",
    "503": "model not available (Retry-After)",
    "504": "model did not answer in time",
}


def embeddings_openapi() -> dict[str, Any]:
    """OpenAPI for POST /v1/embeddings, whose handler reads the raw body (to bound its size
    before parsing) so FastAPI cannot derive it: the request schema and the error answers, for
    clients and for schema-driven tests (tests/test_serve_reliability.py fuzzes from it)."""
    error = {"content": {"application/json": {"schema": ERROR_BODY_SCHEMA}}}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}},
        },
        "responses": {
            status: {"description": description, **error}
            for status, description in _ERROR_STATUSES.items()
        },
    }


def encode_vector(row: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
    return row.astype(np.float32).tolist()


def embeddings_response(
    model: str, vectors: np.ndarray, total_tokens: int, encoding_format: str
) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": index,
                "embedding": encode_vector(row, encoding_format),
            }
            for index, row in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": total_tokens, "total_tokens": total_tokens},
    }


def models_response(
    names: Sequence[str], descriptions: dict[str, ModelDescription], created: int | None = None
) -> dict[str, Any]:
    created = int(time.time()) if created is None else created
    data = []
    for name in names:
        card: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "qwen3-embed",
        }
        described = descriptions.get(name)
        if described is not None:
            # Extensions: what a client needs to pick `dimensions` and size its inputs.
            card.update(
                family=described.family,
                hidden_size=described.hidden_size,
                min_dimensions=described.min_dim,
                max_input_tokens=described.max_length,
            )
        data.append(card)
    return {"object": "list", "data": data}
