"""What the ingress and the model deployment send each other through the deployment handle.

Plain frozen dataclasses and numpy arrays: cheap to pickle, and input errors come back as a
value (`EmbedFailure`) rather than an exception, so their status and code never depend on how an
exception survives a process boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qwen3_embed.vocabulary import Family

from .api_answers import api_answer


@dataclass(frozen=True)
class EmbedJob:
    """One API request's work. `items` are core items: strings, or dicts whose media are bytes
    (the ingress has already fetched URLs and decoded data URIs; no path or URL reaches a model)."""

    items: tuple[Any, ...]
    instruction: str | None
    dimensions: int | None
    truncate: bool
    # Token limit of each input for this request (vLLM's `truncate_prompt_tokens`, which implies
    # `truncate`); None: the model's max_length.
    max_tokens: int | None = None


@dataclass(frozen=True)
class EmbedReply:
    embeddings: np.ndarray  # (N, dim) float32, row i = items[i]
    # Tokens the model saw per input, special and vision tokens included.
    token_counts: tuple[int, ...]
    batch_requests: int  # API requests that shared this request's batch
    batch_inputs: int  # inputs in that batch (of all its requests)
    queue_wait_s: float  # from entering the batch queue to the batch starting
    # Where the time went inside the model replica (Server-Timing, hop measurements).
    prepare_s: float = 0.0  # validation + tokenisation (+ media decoding)
    forward_s: float = 0.0  # the batch's run on the device (all its forward passes)
    model_s: float = 0.0  # from the replica's `embed` starting to its reply

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


@dataclass(frozen=True)
class EmbedFailure:
    """An input the model refused; the ingress answers it as an ApiError."""

    status: int
    message: str
    code: str
    param: str | None = None
    retry_after_s: float | None = None  # set for 429 (the model's queue is full)

    @classmethod
    def from_error(cls, error: Any, param: str | None = None) -> EmbedFailure:
        """A core error -> the API's answer for its code (`api_answers.API_ANSWERS`);
        `param` (default: `error_param`) names the request field at fault."""
        answer = api_answer(error)
        return cls(answer.status, str(error), answer.code, param or error_param(error))


def error_param(error: Any) -> str:
    """The request field a core InputError is about: `input[2]`, `input[2].instruction`,
    `input[0].text[1]`, or a call-level field (`instruction`); `input` when it says nothing."""
    index, field = getattr(error, "index", None), getattr(error, "field", None)
    if index is None:
        return field or "input"
    return f"input[{index}]" + (f".{field}" if field else "")


@dataclass(frozen=True)
class TokenizeReply:
    """The token ids of one input under the model's prompt rules (query prompt, EOS, chat
    template, vision tokens), exactly as `embed` would see them before truncation."""

    input_ids: tuple[int, ...]
    max_length: int  # the model's per-input token limit (vLLM's `max_model_len`)


@dataclass(frozen=True)
class ModelDescription:
    """Facts about a loaded model, for /v1/models, readiness and request validation."""

    name: str
    source: str
    family: Family
    hidden_size: int
    min_dim: int
    max_length: int
    max_batch_size: int
    batch_wait_ms: float
    max_batch_tokens: int
    # How the replica runs the model (`Embedder.describe()`): forward mode, attention kernel.
    forward_mode: str = "padded"
    attention_kernel: str = "sdpa"
    task: str = "embed"  # "embed" (/v1/embeddings) or "rerank" (/v1/rerank, /score)
