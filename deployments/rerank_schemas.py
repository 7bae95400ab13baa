"""Request and response bodies of the rerank API, in the shapes vLLM serves.

- `POST /v1/rerank`, `/v2/rerank`, `/rerank` (Jina's and Cohere's shape): `query`, `documents`
  (strings, objects, or vLLM's `{"content": [parts]}`), `top_n`, `return_documents`; the answer's
  `results` are sorted by `relevance_score`, best first, each with its document's `index`.
- `POST /score`, `/v1/score` (vLLM's shape): `text_1` and `text_2` (or vLLM's newer names
  `queries` and `documents`), one against many or many against as many; `data` in input order.

A document or query object is an item as in `/v1/embeddings`: `{text, image, video, fps,
max_frames}` (Cohere's `{"text": ...}` is one); images and videos need a VL reranker and come as
base64 data URIs or, when enabled, http(s) URLs under the same SSRF rules. As in `schemas`, the
schema checks JSON types only and refuses unknown fields (`unknown_parameter`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

_TRUNCATE_HELP = "truncate over-long pairs with the model's official rule (default); false: 400"
_TPT_HELP = (
    "vLLM: tokens per pair, the prompt's prefix and suffix included (the pair is truncated, "
    "longest first, to fit); -1 or null: the model's max_length"
)
_INSTRUCTION_HELP = "the reranker's task instruction (extension); default: the model's own"


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(
        None, description="served reranker name; may be omitted when one reranker is served"
    )
    query: StrictStr | dict[str, Any] = Field(
        ..., description="a string, an item object (VL: text, image, video), or {content: [parts]}"
    )
    documents: list[Any] | dict[str, Any] = Field(
        ...,
        description="strings or item objects ({text} as Cohere sends, VL: image, video), or "
        "vLLM's {content: [parts]}: one document per part",
    )
    top_n: StrictInt | None = Field(
        None, ge=0, description="keep the best N results; 0 or omitted: all documents"
    )
    return_documents: StrictBool = Field(
        True, description="echo each result's document (as vLLM and Jina do)"
    )
    instruction: StrictStr | None = Field(None, description=_INSTRUCTION_HELP)
    truncate: StrictBool = Field(True, description=_TRUNCATE_HELP)
    truncate_prompt_tokens: StrictInt | None = Field(None, description=_TPT_HELP)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(None, description="served reranker name")
    text_1: StrictStr | list[Any] | dict[str, Any] | None = Field(
        None, description="the query (or queries, as many as text_2): strings or item objects"
    )
    text_2: StrictStr | list[Any] | dict[str, Any] | None = Field(
        None, description="the documents: strings, item objects, or {content: [parts]}"
    )
    queries: StrictStr | list[Any] | dict[str, Any] | None = Field(
        None, description="vLLM's newer name of text_1 (give one of them)"
    )
    documents: StrictStr | list[Any] | dict[str, Any] | None = Field(
        None, description="vLLM's newer name of text_2 (give one of them)"
    )
    instruction: StrictStr | None = Field(None, description=_INSTRUCTION_HELP)
    truncate: StrictBool = Field(True, description=_TRUNCATE_HELP)
    truncate_prompt_tokens: StrictInt | None = Field(None, description=_TPT_HELP)


def _request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def rerank_order(scores: np.ndarray, top_n: int | None) -> list[int]:
    """Indices by descending score, ties in input order (a stable sort), cut to `top_n`."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable").tolist()
    return order[:top_n] if top_n else order


def echo_document(document: Any) -> dict[str, Any]:
    """A result's `document`: `{"text": ...}` for a string (vLLM, Cohere, Jina), the object as
    the client sent it otherwise."""
    return {"text": document} if isinstance(document, str) else document


def render_rerank(
    model: str,
    scores: np.ndarray,
    documents: Sequence[Any],
    top_n: int | None,
    return_documents: bool,
    total_tokens: int,
    api_version: str,
) -> bytes:
    results = []
    for index in rerank_order(scores, top_n):
        result: dict[str, Any] = {"index": index, "relevance_score": float(scores[index])}
        if return_documents:
            result["document"] = echo_document(documents[index])
        results.append(result)
    return orjson.dumps(
        {
            "id": _request_id("rerank"),
            "model": model,
            "results": results,
            "usage": {"prompt_tokens": total_tokens, "total_tokens": total_tokens},
            # Cohere's clients read `meta`; billed_units counts searches as Cohere does (one per
            # query of at most 100 documents).
            "meta": {
                "api_version": {"version": api_version},
                "billed_units": {"search_units": max(1, -(-len(documents) // 100))},
            },
        }
    )


def render_score(model: str, scores: np.ndarray, total_tokens: int) -> bytes:
    return orjson.dumps(
        {
            "id": _request_id("score"),
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": [
                {"index": index, "object": "score", "score": float(score)}
                for index, score in enumerate(scores)
            ],
            "usage": {
                "prompt_tokens": total_tokens,
                "total_tokens": total_tokens,
                "completion_tokens": 0,
            },
        }
    )
