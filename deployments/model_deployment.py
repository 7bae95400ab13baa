"""The model deployment: one replica = one loaded `Embedder`, with dynamic batching.

Each request is prepared (validated, tokenised, media decoded) on its own, off the event loop, so
a bad request is refused alone and never enters a batch. Prepared requests then queue in
`@serve.batch`, which collects up to `max_batch_size` requests (or waits `batch_wait_ms`); the
core's `embed_prepared` splits the batch's inputs into forward passes under the padded-token
budget (`max_batch_tokens`). Batch size and wait are the deployment's `user_config`, applied by
`reconfigure` at start and whenever the config changes, without reloading the weights.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from .config import BatchingConfig, MediaPolicy, ModelConfig, RequestLimits
from .metrics import ModelMetrics
from .protocol import EmbedFailure, EmbedJob, EmbedReply, ModelDescription

_DEFAULT_BATCHING = BatchingConfig()
# Observed batch sizes kept for `stats()` (tests and debugging); metrics carry the full history.
_RECENT_BATCHES = 1024


@dataclass(frozen=True)
class _Pending:
    """One prepared request waiting in the batch queue."""

    prepared: tuple[Any, ...]  # qwen3_embed.PreparedInput
    dim: int
    enqueued_at: float  # time.monotonic()

    @property
    def num_tokens(self) -> int:
        return sum(item.num_tokens for item in self.prepared)


@serve.deployment
class EmbeddingModel:
    def __init__(self, model: ModelConfig, limits: RequestLimits, media: MediaPolicy) -> None:
        # Imported here: torch and transformers load only in model replicas, never in the ingress
        # or the driver that builds the application.
        from qwen3_embed import Embedder
        from qwen3_embed.vl.media import MediaOptions

        self.config = model
        self.limits = limits
        self.embedder = Embedder.from_pretrained(
            model.model,
            device=model.device,
            dtype=model.dtype,
            max_length=model.max_length,
            max_batch_tokens=model.max_batch_tokens,
            forward_mode=model.forward_mode,
            compile=model.compile,
            # Defence in depth: the ingress sends media as bytes only, but whoever else calls this
            # deployment through a handle must not make it read local files or fetch URLs either
            # (the core's defaults allow both, for trusted library use). Ignored by text models.
            media_options=MediaOptions(
                allow_local_paths=False,
                allow_urls=False,
                max_bytes=media.max_media_bytes,
                max_pixels=media.max_image_pixels,
            ),
        )
        # One thread each: tokenisers are not safe to call from several threads at once, and one
        # forward pass at a time is what the device can do anyway. Separate threads let the next
        # request's tokenisation overlap the current batch's forward pass.
        self._prepare_pool = ThreadPoolExecutor(1, thread_name_prefix="qwen3-embed-prepare")
        self._device_pool = ThreadPoolExecutor(1, thread_name_prefix="qwen3-embed-forward")
        self._metrics = ModelMetrics(model.name)
        self._recent_batch_requests: deque[int] = deque(maxlen=_RECENT_BATCHES)
        self._batches = 0
        self._describe_calls = 0  # readiness probes reach models through this (see stats())
        # The batch size and wait come only through `reconfigure` (Serve calls it with the
        # deployment's user_config, which the app builder sets from `model.batching`, before the
        # first request); until then the decorator's defaults below, equal to BatchingConfig().
        self._batching = BatchingConfig()

    # ----------------------------------------------------------- configuration
    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Serve calls this with the deployment's user_config (at start and on every change)."""
        self._apply_batching(BatchingConfig.model_validate(user_config or {}))

    def _apply_batching(self, batching: BatchingConfig) -> None:
        self._embed_batch.set_max_batch_size(batching.max_batch_size)
        self._embed_batch.set_batch_wait_timeout_s(batching.batch_wait_ms / 1000.0)
        self._batching = batching

    def describe(self) -> ModelDescription:
        """Also the readiness probe: a replica answers only once its weights are loaded."""
        self._describe_calls += 1
        return ModelDescription(
            name=self.config.name,
            source=self.config.model,
            family=self.embedder.family,
            hidden_size=self.embedder.hidden_size,
            min_dim=self.embedder.min_dim,
            max_length=self.embedder.max_length,
            max_batch_size=self._batching.max_batch_size,
            batch_wait_ms=self._batching.batch_wait_ms,
            max_batch_tokens=self.embedder.max_batch_tokens,
        )

    def stats(self) -> dict[str, Any]:
        """Observed batching of this replica (the same numbers feed the batch metrics). The
        `_get_*` getters are how `@serve.batch` exposes its live settings."""
        return {
            "batches": self._batches,
            "describe_calls": self._describe_calls,
            "recent_batch_requests": list(self._recent_batch_requests),
            "max_batch_size": self._embed_batch._get_max_batch_size(),
            "batch_wait_timeout_s": self._embed_batch._get_batch_wait_timeout_s(),
        }

    # ------------------------------------------------------------------- serve
    async def embed(self, job: EmbedJob) -> EmbedReply | EmbedFailure:
        from qwen3_embed import DimensionError, InputError

        try:
            dim = self.embedder.validate_dim(job.dimensions)
        except DimensionError as error:
            return EmbedFailure(400, str(error), "invalid_dimensions", "dimensions")
        loop = asyncio.get_running_loop()
        try:
            prepared = await loop.run_in_executor(
                self._prepare_pool,
                self.embedder.prepare,
                list(job.items),
                job.instruction,
                job.truncate,
            )
        except InputError as error:
            return EmbedFailure.from_input_error(error)
        pending = _Pending(tuple(prepared), dim, time.monotonic())
        if pending.num_tokens > self.limits.max_tokens_per_request:
            return EmbedFailure(
                413,
                f"the request has {pending.num_tokens} tokens, more than the limit of "
                f"{self.limits.max_tokens_per_request} per request; split it",
                "request_too_large",
                "input",
            )
        return await self._embed_batch(pending)

    @serve.batch(
        max_batch_size=_DEFAULT_BATCHING.max_batch_size,
        batch_wait_timeout_s=_DEFAULT_BATCHING.batch_wait_ms / 1000,
    )
    async def _embed_batch(self, batch: list[_Pending]) -> list[EmbedReply | EmbedFailure]:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._device_pool, self._embed_grouped, batch)
        latency = time.monotonic() - started
        inputs = sum(len(pending.prepared) for pending in batch)
        waits = [started - pending.enqueued_at for pending in batch]
        self._batches += 1
        self._recent_batch_requests.append(len(batch))
        self._metrics.record_batch(
            len(batch), inputs, sum(p.num_tokens for p in batch), waits, latency
        )
        return [
            rows
            if isinstance(rows, EmbedFailure)
            else EmbedReply(
                embeddings=rows,
                token_counts=tuple(item.num_tokens for item in pending.prepared),
                batch_requests=len(batch),
                batch_inputs=inputs,
                queue_wait_s=wait,
            )
            for pending, rows, wait in zip(batch, vectors, waits, strict=True)
        ]

    def _embed_grouped(self, batch: list[_Pending]) -> list[np.ndarray | EmbedFailure]:
        """One `embed_prepared` call per distinct dimension in the batch (usually one): the core
        sorts the inputs of all requests by length and packs them under the token budget.

        An input that runs out of device memory even alone fails its own request (413, naming
        the input and its token count); the core has already embedded every other input, so the
        neighbouring requests of the batch succeed."""
        by_dim: dict[int, list[int]] = {}
        for position, pending in enumerate(batch):
            by_dim.setdefault(pending.dim, []).append(position)
        vectors: list[np.ndarray | EmbedFailure] = [np.empty((0, 0), dtype=np.float32)] * len(batch)
        for dim, members in by_dim.items():
            items = [item for position in members for item in batch[position].prepared]
            output = self.embedder.embed_prepared(items, dim, errors="collect")
            matrix = output.embeddings.numpy()  # (N, dim) float32
            offset = 0
            for position in members:
                count = len(batch[position].prepared)
                failed = sorted(i - offset for i in output.failures if offset <= i < offset + count)
                if failed:
                    error = output.failures[offset + failed[0]].at(failed[0])
                    vectors[position] = EmbedFailure(413, str(error), error.code, "input")
                else:
                    vectors[position] = matrix[offset : offset + count].copy()
                offset += count
        return vectors
