"""What the ingress and a reranker deployment send each other (as `protocol` does for embeddings).

A request's (query, document) pairs travel as core items (strings, or dicts whose media are
bytes: the ingress has already decoded data URIs and fetched URLs under the SSRF rules). Input
errors come back as an `EmbedFailure` value, as for embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RerankJob:
    """One API request's pairs, scored together with other requests' pairs (continuous batching)."""

    pairs: tuple[tuple[Any, Any], ...]  # (query item, document item)
    instruction: str | None  # None: the model's default instruction
    truncate: bool  # the official over-long rule (longest_first) when True; 400 when False
    # How the API names pair i in errors (`documents[3]`, `text_2[3]`): the ingress knows the form.
    pair_params: tuple[str, ...] = ()
    # Tokens per pair, prompt included, for this request (vLLM's `truncate_prompt_tokens`);
    # None: the model's max_length.
    max_length: int | None = None

    def param(self, index: int) -> str:
        return self.pair_params[index] if index < len(self.pair_params) else f"pairs[{index}]"


@dataclass(frozen=True)
class RerankReply:
    scores: np.ndarray  # (N,) float32 in [0, 1], score i = pairs[i]
    token_counts: tuple[
        int, ...
    ]  # tokens the model saw per pair (prompt prefix and suffix included)
    batch_requests: int  # API requests that shared this request's batch
    batch_inputs: int  # pairs in that batch (of all its requests)
    queue_wait_s: float
    prepare_s: float = 0.0
    forward_s: float = 0.0
    model_s: float = 0.0

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)
