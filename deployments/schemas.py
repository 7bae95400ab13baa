"""Request and response bodies of the OpenAI-compatible API.

The request schema checks JSON types only; what an item or a chat message may contain is checked
by `inputs`, `chat` and the core. Every refusal is a 400 (OpenAI's status for a bad request);
the error `code` tells a type error (`invalid_type`, `invalid_value`, ...) from a content error.
Unknown fields are refused (`unknown_parameter`): a misspelt `instrucion` must not silently
embed documents as queries.
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

    input: StrictStr | list[Any] | None = Field(
        None,
        description=(
            "a string, or a list of strings (VL models: also objects {text, image, video, "
            "instruction, fps, max_frames}; text, image and video may each be a list); "
            "exactly one of input and messages"
        ),
    )
    messages: list[Any] | None = Field(
        None,
        description=(
            "vLLM's chat form: one conversation, one embedding. An optional system message (the "
            "instruction) and one user message whose content is a string or parts "
            "{type: text|image_url|video_url}; exactly one of input and messages"
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
    # vLLM's fields for compact answers (deployments/vector_encoding.py has the rules).
    embed_dtype: (
        Literal["float32", "float16", "bfloat16", "int8", "uint8", "binary", "ubinary"] | None
    ) = Field(
        None,
        description=(
            "vLLM: the values' dtype, float32 (default), float16 or bfloat16 (with "
            "encoding_format base64); also int8, uint8, binary, ubinary (quantised as "
            "sentence-transformers does; int8/uint8 need the server's --calibration)"
        ),
    )
    endianness: Literal["native", "big", "little"] | None = Field(
        None, description="vLLM: byte order of base64 values (default little)"
    )
    user: StrictStr | None = Field(None, description="accepted for compatibility, ignored")
    instruction: StrictStr | None = Field(
        None, description="query instruction (extension); omit for documents"
    )
    truncate: StrictBool = Field(
        False,
        description="truncate over-long inputs instead of answering 400 (extension)",
    )
    # vLLM's fields (deployments/chat.py checks them; docs/serving.md "Requests from vLLM clients").
    truncate_prompt_tokens: StrictInt | None = Field(
        None,
        description=(
            "vLLM: keep the first N tokens of each input (-1: the model's max length); "
            "implies truncate"
        ),
    )
    truncation_side: Literal["right"] | None = Field(
        None, description="vLLM: only 'right' (the query prompt and EOS are kept)"
    )
    add_special_tokens: StrictBool | None = Field(
        None, description="vLLM: accepted at vLLM's default for the form (input: true, chat: false)"
    )
    add_generation_prompt: StrictBool | None = Field(
        None, description="vLLM chat: accepted when true (the official prompt has it)"
    )
    continue_final_message: StrictBool | None = Field(
        None, description="vLLM chat: accepted when false"
    )


class TokenizeRequest(BaseModel):
    """POST /tokenize, in vLLM's shape: `prompt` (its completion form) or `messages` (its chat
    form), plus this API's `instruction`."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(None, description="served model name")
    prompt: StrictStr | None = Field(None, description="one text; exactly one of prompt, messages")
    messages: list[Any] | None = Field(
        None, description="one conversation, as in POST /v1/embeddings"
    )
    instruction: StrictStr | None = Field(
        None, description="count the input as a query with this instruction (extension)"
    )
    add_special_tokens: StrictBool | None = Field(
        None,
        description="vLLM: accepted at vLLM's default for the form (prompt: true, chat: false)",
    )
    add_generation_prompt: StrictBool | None = Field(
        None, description="vLLM chat: accepted when true"
    )
    continue_final_message: StrictBool | None = Field(
        None, description="vLLM chat: accepted when false"
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
    "400": "invalid request: not JSON, not the schema, bad values or input, input too long",
    "401": "missing or invalid API key",
    "404": "unknown model",
    "413": "request body, text characters or media too large",
    "429": "a queue is full (Retry-After)",
    "503": "model not available (Retry-After)",
    "504": "model did not answer in time",
}


def embeddings_openapi(request: type[BaseModel] = EmbeddingRequest) -> dict[str, Any]:
    """OpenAPI for POST /v1/embeddings (and /tokenize), whose handlers read the raw body (to
    bound its size before parsing) so FastAPI cannot derive it: the request schema and the
    error answers, for clients and for schema-driven tests (tests/deployments/test_ingress.py
    fuzzes from it)."""
    error = {"content": {"application/json": {"schema": ERROR_BODY_SCHEMA}}}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": request.model_json_schema()}},
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
        if described is not None and described.task == "rerank":
            # Extensions: a reranker answers /v1/rerank and /score, its pairs up to max_length.
            card.update(
                task="rerank",
                family=described.family,
                max_input_tokens=described.max_length,
                forward_mode=described.forward_mode,
                attention_kernel=described.attention_kernel,
            )
        elif described is not None:
            # Extensions: what a client needs to pick `dimensions` and size its inputs.
            card.update(
                family=described.family,
                hidden_size=described.hidden_size,
                min_dimensions=described.min_dim,
                max_input_tokens=described.max_length,
                forward_mode=described.forward_mode,
                attention_kernel=described.attention_kernel,
            )
        data.append(card)
    return {"object": "list", "data": data}
