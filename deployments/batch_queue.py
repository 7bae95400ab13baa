"""Continuous batching by tokens, inside one model replica (no Ray, no torch: plain asyncio).

Modelled on text-embeddings-inference's `core/src/queue.rs` and infinity's batch handler:

- a request that finds the device idle starts its forward pass at once: no fixed wait hoping
  for company (`@serve.batch` held every request up to `batch_wait_ms`, and counted requests,
  not tokens);
- while a batch runs, whatever arrives queues; when the device frees up, the next batch takes
  the queue's head in arrival order, as many requests as fit `max_batch_tokens` (real tokens)
  and `max_batch_requests` (always at least one, so a request larger than the budget still
  runs, alone) — a burst thus forms full batches by itself;
- `max_wait_s` (optional, default 0) lets an under-full batch wait for company, counted from
  the arrival of its oldest request, never beyond: requests that queued behind a running batch
  have already waited and start as soon as the device is free;
- the queue is bounded in requests and in tokens: beyond either, `submit` raises `QueueFull`
  at once (the replica answers 429 + Retry-After) instead of letting latency grow without end.
  A request always fits an empty queue, so the bound never refuses something that the
  per-request limits allow;
- a request whose caller went away (cancelled) is dropped from the queue, never computed.

Admission comes before the expensive work, as TEI takes its permit before tokenising: the
replica `reserve`s a cheap upper bound of a request's tokens (from its text length) before
tokenising it, and is refused at once when the queue (waiting requests plus reservations) is
full; the reservation becomes the real count at `submit`. Tokenisation happens between the two,
on the replica's prepare threads, so the next batch is prepared while the current one runs on
the device thread.

Units: every token count here is in the model's tokens. A waiting request counts its real
tokens (`queued_tokens`, and the batch budget `max_batch_tokens`); a reservation counts an upper
bound of them (`token_bound`, `reserved_token_bound`), never fewer than it will have.
`max_queued_tokens` bounds the sum of both, so it may refuse a little early, never late.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from qwen3_embed.errors import Qwen3EmbedError

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class QueueLimits:
    """The queue's bounds, taken from values already checked where they entered (the
    replica's `ModelConfig` / `BatchingConfig`, the core's `LoadOptions`): trusted here."""

    max_batch_requests: int  # requests per batch
    max_batch_tokens: int  # real tokens per batch (a lone request may exceed it)
    max_wait_s: float  # how long an under-full batch may wait for company (0: never)
    max_queued_requests: int  # waiting or being prepared, not yet in a running batch
    # Tokens waiting (real counts) plus tokens being prepared (their admission upper bounds).
    max_queued_tokens: int

    def __post_init__(self) -> None:
        assert min(self.max_batch_requests, self.max_batch_tokens) >= 1, self
        assert min(self.max_queued_requests, self.max_queued_tokens) >= 1, self
        assert self.max_wait_s >= 0, self


class QueueFull(Qwen3EmbedError):
    """The queue holds as many requests or tokens as it may; the caller should retry later."""

    code = "queue_full"


class Reservation:
    """Room taken in the queue for a request still being prepared (`ContinuousBatcher.reserve`).
    `release` gives it back (idempotent): `submit` does so when the request enters the queue,
    and the replica when preparing fails or the caller goes away."""

    def __init__(self, owner: ContinuousBatcher[Any, Any], token_bound: int) -> None:
        self._owner: ContinuousBatcher[Any, Any] | None = owner
        self.token_bound = token_bound  # at least the request's real tokens (not yet counted)

    def release(self) -> None:
        if self._owner is not None:
            self._owner._release(self)
            self._owner = None


@dataclass(frozen=True)
class BatchInfo:
    """What a request saw of its batch (headers, metrics, Server-Timing)."""

    requests: int
    queue_wait_s: float  # from `submit` to its batch starting
    run_s: float  # the batch's run (all its forward passes)


@dataclass
class _Waiting(Generic[Item, Result]):
    item: Item
    tokens: int  # real tokens (tokenised)
    enqueued_at: float
    future: asyncio.Future[tuple[Result, BatchInfo]] = field(repr=False)


RunBatch = Callable[[list[Item]], Awaitable[Sequence[Result]]]


class ContinuousBatcher(Generic[Item, Result]):
    """`await submit(item, tokens)` -> (result, BatchInfo). `run_batch(items)` is awaited for one
    batch at a time and returns one result per item, in order; an exception it raises fails
    every request of that batch (and only them)."""

    def __init__(self, run_batch: RunBatch, limits: QueueLimits) -> None:
        self._run_batch = run_batch
        self.limits = limits
        self._queue: deque[_Waiting[Item, Result]] = deque()
        self._queued_tokens = 0  # real tokens of the waiting requests
        self._reserved_requests = 0
        self._reserved_token_bound = 0  # upper bounds of the requests being prepared
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ public
    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    @property
    def queued_tokens(self) -> int:
        """Real tokens of the requests waiting for a batch."""
        return self._queued_tokens

    @property
    def reserved_token_bound(self) -> int:
        """Upper bound of the tokens of the requests still being prepared (their reservations)."""
        return self._reserved_token_bound

    def set_limits(self, limits: QueueLimits) -> None:
        """Takes effect from the next batch (reconfigure at run time)."""
        self.limits = limits
        self._wakeup.set()

    def reserve(self, token_bound: int) -> Reservation:
        """Room for a request about to be prepared, of at most `token_bound` tokens (an upper
        bound of its real count), or `QueueFull` at once when the waiting requests and
        reservations leave too little (a request always fits an empty queue)."""
        self._check_room(token_bound, self._reserved_requests, self._reserved_token_bound)
        self._reserved_requests += 1
        self._reserved_token_bound += token_bound
        return Reservation(self, token_bound)

    def _release(self, reservation: Reservation) -> None:
        self._reserved_requests -= 1
        self._reserved_token_bound -= reservation.token_bound

    def _check_room(self, tokens: int, reserved_requests: int, reserved_token_bound: int) -> None:
        """`tokens`: the newcomer's real count (`submit`) or its upper bound (`reserve`)."""
        waiting = len(self._queue) + reserved_requests
        if waiting and (
            waiting >= self.limits.max_queued_requests
            or self._queued_tokens + reserved_token_bound + tokens > self.limits.max_queued_tokens
        ):
            raise QueueFull(
                f"the model's queue is full ({len(self._queue)} requests, "
                f"{self._queued_tokens} tokens waiting; {reserved_requests} requests, "
                f"at most {reserved_token_bound} tokens being prepared)"
            )

    async def submit(
        self, item: Item, tokens: int, reservation: Reservation | None = None
    ) -> tuple[Result, BatchInfo]:
        """`tokens`: the item's real count. `reservation`: the room `reserve` took for this
        request, which it now takes (the request was admitted then, so it is not checked
        again); without one, the bounds are checked here."""
        if reservation is not None:
            reservation.release()
        else:
            self._check_room(tokens, self._reserved_requests, self._reserved_token_bound)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(item, tokens, time.monotonic(), loop.create_future())
        self._queue.append(waiting)
        self._queued_tokens += tokens
        self._ensure_worker()
        self._wakeup.set()
        try:
            # shield: the caller's cancellation must not cancel the future the worker sets.
            return await asyncio.shield(waiting.future)
        except asyncio.CancelledError:
            self._forget(waiting)
            raise

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    # ---------------------------------------------------------------- internal
    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._work())

    def _forget(self, waiting: _Waiting[Item, Result]) -> None:
        """Drop a cancelled request that has not started (one in a running batch just runs)."""
        try:
            self._queue.remove(waiting)
        except ValueError:
            return  # already taken into a batch
        self._queued_tokens -= waiting.tokens
        if not waiting.future.done():
            waiting.future.cancel()

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._linger()
            batch = self._take()
            if batch:
                await self._run(batch)

    async def _linger(self) -> None:
        """With max_wait_s > 0: wait while the batch is under-full, until its oldest request
        has waited max_wait_s."""
        while self._queue:
            limits = self.limits
            deadline = self._queue[0].enqueued_at + limits.max_wait_s
            remaining = deadline - time.monotonic()
            full = (
                len(self._queue) >= limits.max_batch_requests
                or self._queued_tokens >= limits.max_batch_tokens
            )
            if full or remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[_Waiting[Item, Result]]:
        """The queue's head in arrival order, under both batch budgets (at least one request)."""
        limits = self.limits
        batch: list[_Waiting[Item, Result]] = []
        tokens = 0
        while self._queue and len(batch) < limits.max_batch_requests:
            head = self._queue[0]
            if batch and tokens + head.tokens > limits.max_batch_tokens:
                break
            self._queue.popleft()
            self._queued_tokens -= head.tokens
            if head.future.done():  # cancelled while waiting
                continue
            batch.append(head)
            tokens += head.tokens
        return batch

    async def _run(self, batch: list[_Waiting[Item, Result]]) -> None:
        started = time.monotonic()
        try:
            results = await self._run_batch([waiting.item for waiting in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)}")
        except asyncio.CancelledError:
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.cancel()
            raise
        except Exception as error:  # fails this batch's requests, not the worker
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(error)
            return
        run_s = time.monotonic() - started
        for waiting, result in zip(batch, results, strict=True):
            if not waiting.future.done():
                info = BatchInfo(len(batch), started - waiting.enqueued_at, run_s)
                waiting.future.set_result((result, info))
