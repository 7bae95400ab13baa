"""What the embedding and reranking replicas share around their continuous batcher: the
numbers `stats()` reports and the 429 a full queue answers. Each replica sets the attributes
below in its own `__init__` (its batcher, queue sizer and batch counters)."""

from __future__ import annotations

from collections import deque
from typing import Any

from .batch_queue import ContinuousBatcher, QueueFull
from .config import ModelConfig
from .protocol import EmbedFailure
from .serving_defaults import QueueSizer


class BatchedReplica:
    config: ModelConfig
    _batcher: ContinuousBatcher
    _queue_sizer: QueueSizer
    _recent_batch_requests: deque[int]
    _batches: int
    _describe_calls: int  # readiness probes reach models through `describe`

    def stats(self) -> dict[str, Any]:
        """Observed batching of this replica (the same numbers feed the batch metrics) and the
        live settings of its queue."""
        limits = self._batcher.limits
        return {
            "batches": self._batches,
            "describe_calls": self._describe_calls,
            "recent_batch_requests": list(self._recent_batch_requests),
            "max_batch_size": limits.max_batch_requests,
            "batch_wait_timeout_s": limits.max_wait_s,
            "max_batch_tokens": limits.max_batch_tokens,
            "max_queued_tokens": limits.max_queued_tokens,
            "queued_requests": self._batcher.queued_requests,
            "queued_tokens": self._batcher.queued_tokens,
            "reserved_token_bound": self._batcher.reserved_token_bound,
            "tokens_per_s": self._queue_sizer.tokens_per_s,
        }

    def _queue_full(self, error: QueueFull) -> EmbedFailure:
        return EmbedFailure(
            429,
            f"{error}; retry after {self.config.retry_after_s:g}s",
            "queue_full",
            retry_after_s=self.config.retry_after_s,
        )
