"""The model deployment: one replica = one loaded `Embedder`, with continuous batching.

Each request is first admitted or refused against the batch queue by a cheap upper bound of its
tokens (from its text length), before any tokenising: an overloaded replica answers 429 at once.
An admitted request is prepared (validated, tokenised, media decoded) on its own, on the prepare
pools (deployments/prepare_pool.py: text and media apart), so a bad request is refused alone and
never enters a batch, and the next batch is tokenised while the current one runs. Prepared requests then enter a `ContinuousBatcher`
(deployments/batch_queue.py): a request that finds the device idle starts at once; what arrives
while it is busy forms the next batch, up to `max_batch_size` requests and `max_batch_tokens`
tokens. One batch is one `embed_prepared` call, which splits it into forward passes under the
padded-token budget. Batch size and wait are the deployment's `user_config`, applied by
`reconfigure` at start and whenever the config changes, without reloading the weights.

`ModelServer` is the replica's logic as a plain class; `EmbeddingModel` is it as a Serve
deployment (called by the ingress through a handle). With `ingress.colocate` the ingress
replica holds a `ModelServer` itself and calls it in-process (deployments/ingress.py).
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

from .batch_queue import ContinuousBatcher, QueueFull, QueueLimits
from .batched_replica import BatchedReplica
from .config import BatchingConfig, MediaPolicy, ModelConfig, RequestLimits
from .metrics import ModelMetrics
from .prepare_pool import (
    INLINE_PREPARE_MAX_TOKENS,
    MEDIA_PREPARE_THREADS,
    TEXT_PREPARE_THREADS,
    Abandoned,
    PreparerPool,
)
from .protocol import EmbedFailure, EmbedJob, EmbedReply, ModelDescription, TokenizeReply
from .serving_defaults import QueueSizer, has_media, serving_load_options, token_upper_bound

# Observed batch sizes kept for `stats()` (tests and debugging); metrics carry the full history.
_RECENT_BATCHES = 1024
# `tokenize` counts over-long inputs instead of refusing them: no token limit of its own (the
# ingress's character and media limits bound the work).
_NO_TOKEN_LIMIT = 2**62


@dataclass(frozen=True)
class _Pending:
    """One prepared request waiting in the batch queue."""

    prepared: tuple[Any, ...]  # qwen3_embed.PreparedInput
    dim: int
    enqueued_at: float  # time.monotonic()

    @property
    def num_tokens(self) -> int:
        return sum(item.num_tokens for item in self.prepared)


@dataclass(frozen=True)
class _Done:
    """One request's share of a batch's output."""

    embeddings: np.ndarray | EmbedFailure  # (n, dim) float32, or why this request failed
    batch_inputs: int


class ModelServer(BatchedReplica):
    def __init__(self, model: ModelConfig, limits: RequestLimits, media: MediaPolicy) -> None:
        # Imported here: torch and transformers load only in model replicas, never in the ingress
        # or the driver that builds the application.
        from transformers.utils import logging as transformers_logging

        from qwen3_embed import Embedder
        from qwen3_embed.vl.media import MediaOptions

        # A replica's "Loading weights" bar, relayed to the server's terminal, is noise there.
        transformers_logging.disable_progress_bar()
        self.config = model
        self.limits = limits
        self.embedder = Embedder.from_options(
            serving_load_options(model.load_options()),
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
        # Text and media requests are prepared on pools of their own (a slow video never delays
        # a text request), each thread with its own copy of the tokenizer; one forward pass at a
        # time is what the device can do. The pools let the next requests' tokenisation overlap
        # the current batch's forward pass.
        preparer = self.embedder.preparer
        self._text_pool = PreparerPool(
            preparer, TEXT_PREPARE_THREADS, "qwen3-embed-prepare", INLINE_PREPARE_MAX_TOKENS
        )
        self._media_pool = (
            PreparerPool(preparer, MEDIA_PREPARE_THREADS, "qwen3-embed-media")
            if self.embedder.family == "vl"
            else None
        )
        self._device_pool = ThreadPoolExecutor(1, thread_name_prefix="qwen3-embed-forward")
        # Template tokens around a text (query prompt, chat template, EOS): the part of the
        # admission bound that does not grow with the text.
        self._prompt_tokens = max(
            len(item.input_ids)
            for item in (*preparer.prepare(["-"]), *preparer.prepare(["-"], "-"))
        )
        # max_queued_tokens: fixed, or (None) sized to what this replica finishes in time.
        self._queue_sizer = QueueSizer(model.max_queued_tokens, self.embedder.max_batch_tokens)
        self._metrics = ModelMetrics(model.name)
        self._recent_batch_requests: deque[int] = deque(maxlen=_RECENT_BATCHES)
        self._batches = 0
        self._describe_calls = 0  # readiness probes reach models through this (see stats())
        # The batch size and wait come through `reconfigure` (Serve calls it with the
        # deployment's user_config, which the app builder sets from `model.batching`, before the
        # first request); until then BatchingConfig's defaults.
        self._batching = BatchingConfig()
        self._batcher: ContinuousBatcher[_Pending, _Done] = ContinuousBatcher(
            self._run_batch, self._queue_limits(self._batching)
        )

    # ----------------------------------------------------------- configuration
    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Serve calls this with the deployment's user_config (at start and on every change)."""
        self._apply_batching(BatchingConfig.model_validate(user_config or {}))

    def _apply_batching(self, batching: BatchingConfig) -> None:
        self._batcher.set_limits(self._queue_limits(batching))
        self._batching = batching

    def _queue_limits(self, batching: BatchingConfig) -> QueueLimits:
        return QueueLimits(
            max_batch_requests=batching.max_batch_size,
            # One batch ~ one forward pass: a newcomer waits for at most one pass's worth. The
            # embedder's budget, not the config's, which may be None (the core's device default).
            max_batch_tokens=self.embedder.max_batch_tokens,
            max_wait_s=batching.batch_wait_ms / 1000.0,
            # Serve already bounds the requests inside a replica at max_ongoing_requests; the
            # queue holds the same bound (defence when the replica is called in other ways).
            max_queued_requests=self.config.max_ongoing_requests,
            max_queued_tokens=self._queue_sizer.max_queued_tokens,
        )

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
            forward_mode=self.embedder.forward_mode,
            attention_kernel=self.embedder.attention_kernel,
        )

    # ------------------------------------------------------------------- serve
    async def embed(self, job: EmbedJob) -> EmbedReply | EmbedFailure:
        from qwen3_embed import DimensionError

        arrived = time.monotonic()
        try:
            # The API's field is `dimensions` (the core's argument is `dim`): the answer says so.
            dim = self.embedder.validate_dim(job.dimensions, "dimensions")
        except DimensionError as error:
            return EmbedFailure.from_error(error, "dimensions")
        # Admission before the expensive work: room for an upper bound of the request's tokens,
        # or 429 at once, before any tokenising or decoding.
        try:
            reservation = self._batcher.reserve(self._admission_token_bound(job))
        except QueueFull as error:
            return self._queue_full(error)
        try:
            prepared = await self._prepare(job, job.truncate, job.max_tokens)
            if isinstance(prepared, EmbedFailure):
                return prepared
            pending = _Pending(tuple(prepared), dim, time.monotonic())
            prepare_s = pending.enqueued_at - arrived
            if pending.num_tokens > self.limits.max_tokens_per_request:
                # 400 with OpenAI's code for its own per-request token limit (it was a 413).
                return EmbedFailure(
                    400,
                    f"the request has {pending.num_tokens} tokens, more than the limit of "
                    f"{self.limits.max_tokens_per_request} per request; split it",
                    "max_tokens_per_request",
                    "input",
                )
            done, batch = await self._batcher.submit(pending, pending.num_tokens, reservation)
        finally:
            reservation.release()  # a no-op once submit took it
        if isinstance(done.embeddings, EmbedFailure):
            return done.embeddings  # one of its inputs does not fit the device even alone
        return EmbedReply(
            embeddings=done.embeddings,
            token_counts=tuple(item.num_tokens for item in pending.prepared),
            batch_requests=batch.requests,
            batch_inputs=done.batch_inputs,
            queue_wait_s=batch.queue_wait_s,
            prepare_s=prepare_s,
            forward_s=batch.run_s,
            model_s=time.monotonic() - arrived,
        )

    def _admission_token_bound(self, job: EmbedJob, truncated: bool = True) -> int:
        """An upper bound of the tokens the job's items will have, from their lengths alone
        (`token_upper_bound`): what admission reserves in the queue before tokenising;
        `truncated=False`: before truncation (how much tokenising the job costs)."""
        cap = (job.max_tokens or self.embedder.max_length) if truncated else _NO_TOKEN_LIMIT
        return sum(
            token_upper_bound(item, job.instruction, self._prompt_tokens, cap) for item in job.items
        )

    async def tokenize(self, job: EmbedJob) -> TokenizeReply | EmbedFailure:
        """The token ids `embed` would see for the job's one input (before truncation), on the
        prepare thread; no batch, no forward pass."""
        prepared = await self._prepare(job, False, _NO_TOKEN_LIMIT)
        if isinstance(prepared, EmbedFailure):
            return prepared
        return TokenizeReply(tuple(prepared[0].input_ids), self.embedder.max_length)

    async def _prepare(
        self, job: EmbedJob, truncate: bool, max_tokens: int | None
    ) -> list[Any] | EmbedFailure:  # list of qwen3_embed.PreparedInput
        """The job's items prepared on their pool (media or text; a small text job right on
        the event loop), or the failure its first bad item answers."""
        from qwen3_embed import InputError

        media = self._media_pool is not None and has_media(job.items)
        pool = self._media_pool if media else self._text_pool
        assert pool is not None
        try:
            return await pool.prepare(
                job.items,
                job.instruction,
                truncate,
                max_tokens,
                per_item=media,
                bound_tokens=None if media else self._admission_token_bound(job, truncated=False),
            )
        except InputError as error:
            return EmbedFailure.from_error(error)
        except Abandoned:
            raise asyncio.CancelledError from None  # its caller is gone: nobody reads an answer

    async def _run_batch(self, batch: list[_Pending]) -> list[_Done]:
        """One batch from the queue: all its requests in one `embed_prepared` call, on the
        device thread (the event loop keeps accepting and preparing requests meanwhile)."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._device_pool, self._embed_mixed, batch)
        latency = time.monotonic() - started
        inputs = sum(len(pending.prepared) for pending in batch)
        self._batches += 1
        self._recent_batch_requests.append(len(batch))
        tokens = sum(p.num_tokens for p in batch)
        if self._queue_sizer.record(tokens, latency):
            self._batcher.set_limits(self._queue_limits(self._batching))
        self._metrics.record_batch(
            len(batch),
            inputs,
            tokens,
            [started - p.enqueued_at for p in batch],
            latency,
        )
        return [_Done(rows, inputs) for rows in vectors]

    def _embed_mixed(self, batch: list[_Pending]) -> list[np.ndarray | EmbedFailure]:
        """One `embed_prepared` call for the whole batch, whatever dimensions its requests ask:
        the core sorts all inputs by length and packs them under the token budget. With one
        dimension (the usual case) the core applies it; with several, the batch is embedded at
        full size once and each request's rows are brought to its dimension by the core's one
        MRL step, `Embedder.apply_dim` (slice, then re-normalise: normalize(truncate(
        normalize(x))) equals normalize(truncate(x)), since normalising only scales a row).

        An input that runs out of device memory even alone fails its own request (413, naming
        the input and its token count); the core has already embedded every other input, so the
        neighbouring requests of the batch succeed."""
        items = [item for pending in batch for item in pending.prepared]
        dims = {pending.dim for pending in batch}
        shared_dim = next(iter(dims)) if len(dims) == 1 else None
        output = self.embedder.embed_prepared(items, shared_dim, errors="collect")
        vectors: list[np.ndarray | EmbedFailure] = []
        offset = 0
        for pending in batch:
            count = len(pending.prepared)
            failed = [i for i in range(offset, offset + count) if i in output.failures]
            rows = output.embeddings[offset : offset + count]  # (n, dim) float32
            offset += count
            if failed:
                error = output.failures[failed[0]].at(failed[0] - (offset - count))
                vectors.append(EmbedFailure.from_error(error))
                continue
            if shared_dim is None and pending.dim != rows.shape[1]:
                rows = self.embedder.apply_dim(rows, pending.dim)
            vectors.append(rows.numpy().copy())  # own buffer: only this request's rows travel
        return vectors


# The deployment the ingress calls through a handle (one per served model).
EmbeddingModel = serve.deployment(ModelServer, name="EmbeddingModel")
