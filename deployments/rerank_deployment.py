"""The reranker deployment: one replica = one loaded `qwen3_embed.Reranker`, with the same
continuous batching by tokens as the embedding replicas (`batch_queue.ContinuousBatcher`).

As there, a request is first admitted or refused (429 at once) against the queue by an upper
bound of its pairs' tokens from their text lengths, before any tokenising; an admitted request's
pairs are then prepared (validated, formatted with the official prompt, tokenised, media
decoded) on the prepare pools (`prepare_pool`: text and media apart, a copy of the tokenizer
per thread), so a bad request is refused alone and never enters a batch. A prepared request then enters the batch queue as one unit of its pairs' tokens; a batch
takes whole requests under `max_batch_size` requests and the reranker's `max_batch_tokens`, and
scores all their pairs in one `rerank_prepared` call on the device thread: the pairs of one
request are batched with other requests' pairs.

`RerankServer` is the replica's logic as a plain class (also what a colocated ingress holds);
`RerankModel` is it as a Serve deployment.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from .api_answers import api_answer
from .batch_queue import ContinuousBatcher, QueueFull, QueueLimits
from .batched_replica import BatchedReplica
from .config import BatchingConfig, MediaPolicy, ModelConfig, RequestLimits
from .metrics import ModelMetrics
from .prepare_pool import MEDIA_PREPARE_THREADS, TEXT_PREPARE_THREADS, Abandoned, PreparerPool
from .protocol import EmbedFailure, ModelDescription
from .rerank_protocol import RerankJob, RerankReply
from .serving_defaults import QueueSizer, has_media, serving_load_options, token_upper_bound

# No limit for the one-sided bounds below (the pair's bound is capped as a whole).
_UNCAPPED = 2**62

_RECENT_BATCHES = 1024


@dataclass(frozen=True)
class _Pending:
    """One prepared request waiting in the batch queue."""

    prepared: tuple[Any, ...]  # qwen3_embed.PreparedInput, one per pair
    job: RerankJob
    enqueued_at: float

    @property
    def num_tokens(self) -> int:
        return sum(item.num_tokens for item in self.prepared)


@dataclass(frozen=True)
class _Done:
    """One request's share of a batch's output."""

    scores: np.ndarray | EmbedFailure  # (n,) float32, or why this request failed
    batch_pairs: int  # pairs in the whole batch


class RerankServer(BatchedReplica):
    def __init__(self, model: ModelConfig, limits: RequestLimits, media: MediaPolicy) -> None:
        # Imported here: torch and transformers load only in model replicas.
        from transformers.utils import logging as transformers_logging

        from qwen3_embed import Reranker
        from qwen3_embed.vl.media import MediaOptions

        transformers_logging.disable_progress_bar()
        self.config = model
        self.limits = limits
        self.media = media
        # The embedding replicas' serving default: `auto` on a CPU serves a Qwen3 text model
        # packed (the text reranker is one; its packed scores equal the padded ones, see
        # tests/core/test_reranker_core.py). A VL reranker keeps the core's choice.
        load = serving_load_options(model.load_options())
        # As in the embedding replicas, defence in depth: the ingress sends media as bytes only,
        # and whoever else calls this deployment must not make it read local files or fetch URLs.
        self.reranker = Reranker.from_options(
            load,
            media_options=MediaOptions(
                allow_local_paths=False,
                allow_urls=False,
                max_bytes=media.max_media_bytes,
                max_pixels=media.max_image_pixels,
            ),
            task="rerank",
        )
        # As the embedding replicas: text and media pairs on pools of their own, each thread
        # with its own copy of the preparer; one forward pass at a time on the device thread.
        preparer = self.reranker.preparer
        self._text_pool = PreparerPool(preparer, TEXT_PREPARE_THREADS, "qwen3-rerank-prepare")
        self._media_pool = (
            PreparerPool(preparer, MEDIA_PREPARE_THREADS, "qwen3-rerank-media")
            if self.reranker.family == "vl"
            else None
        )
        self._device_pool = ThreadPoolExecutor(1, thread_name_prefix="qwen3-rerank-forward")
        # The prompt's own tokens around a pair (system prefix, <Instruct>/<Query>/<Document>
        # tags, the assistant suffix), measured with one-character texts: the part of the
        # admission bound that does not grow with the texts.
        (template,) = preparer.prepare([("-", "-")], "-")
        self._prompt_tokens = len(template.input_ids)
        # max_queued_tokens: fixed, or (None) sized to what this replica finishes in time.
        self._queue_sizer = QueueSizer(model.max_queued_tokens, self.max_batch_tokens)
        self._metrics = ModelMetrics(model.name)
        self._recent_batch_requests: deque[int] = deque(maxlen=_RECENT_BATCHES)
        self._batches = 0
        self._describe_calls = 0
        self._batching = BatchingConfig()
        self._batcher: ContinuousBatcher[_Pending, _Done] = ContinuousBatcher(
            self._run_batch, self._queue_limits(self._batching)
        )

    # ----------------------------------------------------------- configuration
    @property
    def max_batch_tokens(self) -> int:
        # The core's budget (its device default when the config leaves it unset).
        return self.reranker.max_batch_tokens

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        batching = BatchingConfig.model_validate(user_config or {})
        self._batcher.set_limits(self._queue_limits(batching))
        self._batching = batching

    def _queue_limits(self, batching: BatchingConfig) -> QueueLimits:
        return QueueLimits(
            max_batch_requests=batching.max_batch_size,
            max_batch_tokens=self.max_batch_tokens,
            max_wait_s=batching.batch_wait_ms / 1000.0,
            max_queued_requests=self.config.max_ongoing_requests,
            max_queued_tokens=self._queue_sizer.max_queued_tokens,
        )

    def describe(self) -> ModelDescription:
        """Also the readiness probe: a replica answers only once its weights are loaded."""
        self._describe_calls += 1
        return ModelDescription(
            name=self.config.name,
            source=self.config.model,
            family=self.reranker.family,
            hidden_size=0,  # no vectors: a reranker answers scores
            min_dim=0,
            max_length=self.reranker.max_length,
            max_batch_size=self._batching.max_batch_size,
            batch_wait_ms=self._batching.batch_wait_ms,
            max_batch_tokens=self.max_batch_tokens,
            forward_mode=self.reranker.forward_mode,
            attention_kernel=self.reranker.backend.attention_kernel,
            task="rerank",
        )

    # ------------------------------------------------------------------- serve
    async def rerank(self, job: RerankJob) -> RerankReply | EmbedFailure:
        arrived = time.monotonic()
        # Admission before the expensive work: room for an upper bound of the pairs' tokens, or
        # 429 at once, before any tokenising or decoding.
        try:
            reservation = self._batcher.reserve(self._admission_token_bound(job))
        except QueueFull as error:
            return self._queue_full(error)
        try:
            prepared = await self._prepare(job)
            if isinstance(prepared, EmbedFailure):
                return prepared
            pending = _Pending(tuple(prepared), job, time.monotonic())
            prepare_s = pending.enqueued_at - arrived
            if pending.num_tokens > self.limits.max_tokens_per_request:
                return EmbedFailure(
                    400,
                    f"the request's pairs have {pending.num_tokens} tokens, more than the limit "
                    f"of {self.limits.max_tokens_per_request} per request; split it",
                    "max_tokens_per_request",
                    "documents",
                )
            done, batch = await self._batcher.submit(pending, pending.num_tokens, reservation)
        finally:
            reservation.release()  # a no-op once submit took it
        if isinstance(done.scores, EmbedFailure):
            return done.scores
        return RerankReply(
            scores=done.scores,
            token_counts=tuple(item.num_tokens for item in pending.prepared),
            batch_requests=batch.requests,
            batch_inputs=done.batch_pairs,
            queue_wait_s=batch.queue_wait_s,
            prepare_s=prepare_s,
            forward_s=batch.run_s,
            model_s=time.monotonic() - arrived,
        )

    def _admission_token_bound(self, job: RerankJob) -> int:
        """An upper bound of the tokens the job's pairs will have, from their lengths alone (the
        embedding replicas' rule, `token_upper_bound`, over both sides of each pair)."""
        cap = job.max_length or self.reranker.max_length
        instruction = job.instruction or self.reranker.default_instruction
        return sum(
            pair_token_bound(pair, instruction, self._prompt_tokens, cap) for pair in job.pairs
        )

    async def _prepare(self, job: RerankJob) -> list[Any] | EmbedFailure:
        """The job's pairs prepared on their pool (media or text), or the failure its first bad
        pair answers (named as the API names that pair)."""
        from qwen3_embed import InputError

        media = self._media_pool is not None and has_media(
            [side for pair in job.pairs for side in pair]
        )
        pool = self._media_pool if media else self._text_pool
        assert pool is not None
        try:
            return await pool.prepare(job.pairs, job.instruction, job.truncate, job.max_length)
        except InputError as error:
            index = error.index if error.index is not None else 0
            return _pair_failure(error, job.param(index))
        except Abandoned:
            raise asyncio.CancelledError from None  # its caller is gone: nobody reads an answer

    async def _run_batch(self, batch: list[_Pending]) -> list[_Done]:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        scores = await loop.run_in_executor(self._device_pool, self._score_batch, batch)
        latency = time.monotonic() - started
        pairs = sum(len(pending.prepared) for pending in batch)
        self._batches += 1
        self._recent_batch_requests.append(len(batch))
        tokens = sum(p.num_tokens for p in batch)
        if self._queue_sizer.record(tokens, latency):
            self._batcher.set_limits(self._queue_limits(self._batching))
        self._metrics.record_batch(
            len(batch),
            pairs,
            tokens,
            [started - p.enqueued_at for p in batch],
            latency,
        )
        return [_Done(one, pairs) for one in scores]

    def _score_batch(self, batch: list[_Pending]) -> list[np.ndarray | EmbedFailure]:
        """All pairs of the batch in one `rerank_prepared` call (the core sorts them by length and
        splits them under its token budget). A pair that does not fit the device even alone
        fails its own request (413, naming the pair); the core has scored every other pair, so
        the neighbouring requests of the batch succeed."""
        items = [item for pending in batch for item in pending.prepared]
        output = self.reranker.rerank_prepared(items, errors="collect")
        out: list[np.ndarray | EmbedFailure] = []
        offset = 0
        for pending in batch:
            count = len(pending.prepared)
            failed = [i for i in range(offset, offset + count) if i in output.failures]
            if failed:
                out.append(
                    _pair_failure(output.failures[failed[0]], pending.job.param(failed[0] - offset))
                )
            else:
                out.append(output.scores[offset : offset + count].copy())  # own buffer
            offset += count
        return out


def pair_token_bound(pair: Sequence[Any], instruction: str, prompt_tokens: int, cap: int) -> int:
    """At most how many tokens a (query, document) pair will have: the prompt's own tokens plus
    both sides' UTF-8 bytes plus the instruction's (`token_upper_bound`'s reasoning), at most
    `cap` (a pair is truncated to max_length, or refused); a side with media counts `cap`."""
    query, document = pair
    if has_media([query, document]):
        return cap
    sides = token_upper_bound(query, instruction, 0, _UNCAPPED) + token_upper_bound(
        document, None, 0, _UNCAPPED
    )
    return max(1, min(cap, prompt_tokens + sides))


def _pair_failure(error: Any, param: str) -> EmbedFailure:
    """A core error about one pair -> the API's answer, naming the pair as the client sent it."""
    answer = api_answer(error)
    return EmbedFailure(answer.status, f"{param}: {error.reason}", answer.code, param)


# The deployment the ingress calls through a handle (one per served reranker).
RerankModel = serve.deployment(RerankServer, name="RerankModel")
