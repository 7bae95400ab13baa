"""Where a model replica prepares requests (validate, tokenise, decode media): thread pools of
their own, off the event loop and off the device thread (no Ray, no torch here).

- Text requests are tokenised on `TEXT_PREPARE_THREADS` threads, each with its own copy of the
  model's preparer: a Hugging Face fast tokenizer must not be called from two threads at once
  (a call that sets truncation borrows the Rust tokenizer mutably, and a second call then fails
  with "Already borrowed"), while separate copies tokenise in parallel (the Rust encoder
  releases the GIL). A long request then no longer holds up every request behind it.
- Requests with images or videos are prepared on a pool of their own, so a slow decode never
  delays a text request.
- A small text request (its tokens bounded by `INLINE_PREPARE_MAX_TOKENS` from its length,
  before tokenising) is tokenised on the calling thread, the replica's event loop, with a copy
  of the preparer of its own: that takes ~0.1 ms, less than handing it to a pool thread and
  back (two thread wake-ups: 0.4 ms median, p90 ~6 ms on 2 busy cores, measured in-process).
  Larger requests keep the pool, so the loop is never held long.
- A request whose caller went away (client gone, 504 at the ingress) is dropped: not started
  if it was still waiting for a thread, and not continued past the item being decoded when it
  has media (media requests are prepared item by item for that reason).
"""

from __future__ import annotations

import asyncio
import copy
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from qwen3_embed.errors import Qwen3EmbedError

TEXT_PREPARE_THREADS = 2
MEDIA_PREPARE_THREADS = 1
# Text requests bounded by this many tokens (from their UTF-8 length: ~1 KB of text) are
# tokenised on the event loop itself; tokenising that much takes well under a millisecond.
INLINE_PREPARE_MAX_TOKENS = 1024


class Abandoned(Qwen3EmbedError):
    """The request's caller went away while it was being prepared; its remaining items were
    not prepared."""

    code = "abandoned"


class PreparerPool:
    """`threads` threads and as many copies of `preparer` (the original stays its owner's, and
    another pool's copies are its own): each call borrows a copy no other thread is using."""

    def __init__(self, preparer: Any, threads: int, name: str, inline_max_tokens: int = 0) -> None:
        """`inline_max_tokens`: requests whose token bound is at most this are prepared on the
        calling thread (0: never), with a copy of the preparer kept for that thread."""
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(threads):
            self._free.put(copy.deepcopy(preparer))
        self._inline_max_tokens = inline_max_tokens
        self._inline = copy.deepcopy(preparer) if inline_max_tokens > 0 else None
        # Held while the inline copy tokenises: a caller on another thread (a second event
        # loop) never shares it, it takes the pool instead.
        self._inline_lock = threading.Lock()

    async def prepare(
        self,
        items: Sequence[Any],
        instruction: str | None,
        truncate: bool,
        max_length: int | None,
        per_item: bool = False,
        bound_tokens: int | None = None,
    ) -> list[Any]:
        """`Preparer.prepare` of `items` on one of the pool's threads; raises its InputError.
        `per_item`: one item at a time, stopping (Abandoned) once the caller is gone.
        `bound_tokens`: an upper bound of the items' tokens; at most `inline_max_tokens`, they
        are prepared right here instead, on the calling thread."""
        if (
            self._inline is not None
            and not per_item
            and bound_tokens is not None
            and bound_tokens <= self._inline_max_tokens
            and self._inline_lock.acquire(blocking=False)
        ):
            try:
                return self._inline.prepare(list(items), instruction, truncate, max_length)
            finally:
                self._inline_lock.release()
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(
            self._executor,
            self._run,
            list(items),
            instruction,
            truncate,
            max_length,
            per_item,
            stop,
        )
        try:
            # Cancelling the awaiting task cancels `work` too: if no thread has taken it yet, it
            # never starts (asyncio cancels the executor's future).
            return await work
        except asyncio.CancelledError:
            stop.set()  # a thread already running it stops before its next item
            raise

    def _run(
        self,
        items: list[Any],
        instruction: str | None,
        truncate: bool,
        max_length: int | None,
        per_item: bool,
        stop: threading.Event,
    ) -> list[Any]:
        preparer = self._free.get()
        try:
            if not per_item:
                return preparer.prepare(items, instruction, truncate, max_length)
            prepared = []
            for index, item in enumerate(items):
                if stop.is_set():
                    raise Abandoned(f"abandoned before input[{index}]: its caller went away")
                (result,) = preparer.prepare_each([item], instruction, truncate, max_length)
                if isinstance(result, Exception):
                    raise result.at(index)
                prepared.append(result)
            return prepared
        finally:
            self._free.put(preparer)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


__all__ = [
    "INLINE_PREPARE_MAX_TOKENS",
    "MEDIA_PREPARE_THREADS",
    "TEXT_PREPARE_THREADS",
    "Abandoned",
    "PreparerPool",
]
