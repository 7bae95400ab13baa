"""The forward loop of one `embed_prepared` call: plan batches under the token budget, overlap the
host work of the next batch with the device work of the current one, and survive OOM.

- Overlap: a GPU runs kernels asynchronously, so once batch i's forward is launched the host is
  free; it stages batch i+1 (pack or pad, pin) before touching batch i's result. Vectors stay on
  the device; the caller copies them to the host once per call.
- OOM: a batch that runs out of device memory is split in half and both halves go back to the
  front of the queue; the budget drops to half the failed batch's tokens for the rest of the
  call (and later calls: it lives on the Embedder) and grows back slowly after successes. An
  input that runs out of memory alone is reported for that input only (its token count named);
  every other input still gets its vector, none is dropped. The device's cached memory is freed
  after the failed forward's exception has been let go (its traceback holds the forward's
  activations), and an input that runs out of memory alone gets one retry after that cleanup
  before it is reported: a fragmented allocator is not a too-large input.
- No host sync per batch: vectors are scattered into input order once per call, through a device
  index tensor.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .batching import plan_batches, plan_packed_batches
from .contracts import Backend, PreparedInput
from .errors import InputTooLargeForDeviceError
from .oom import TokenBudget, is_out_of_memory, release_device_memory

logger = logging.getLogger(__name__)

Postprocess = Callable[[torch.Tensor], torch.Tensor]  # (B, H) pooled -> (B, dim) float32


def plan(backend: Backend, lengths: Sequence[int], budget: int) -> list[list[int]]:
    if backend.forward_mode == "packed":
        return plan_packed_batches(lengths, budget)
    return plan_batches(lengths, budget)


def _tokens(backend: Backend, lengths: Sequence[int], indices: Sequence[int]) -> int:
    """What a batch costs the device: real tokens when packed, padded tokens otherwise."""
    if backend.forward_mode == "packed":
        return sum(lengths[i] for i in indices)
    return max(lengths[i] for i in indices) * len(indices)


def run_forwards(
    backend: Backend,
    prepared: Sequence[PreparedInput],
    out_dim: int,
    pooling_mode: str,
    postprocess: Postprocess,
    budget: TokenBudget,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, dict[int, InputTooLargeForDeviceError]]:
    """((N, out_dim) float32 on the device, {position: error} for inputs too large alone).
    `progress(n)` is called as each batch of n inputs is done (embedded, or failed alone)."""
    lengths = [item.num_tokens for item in prepared]
    failures: dict[int, InputTooLargeForDeviceError] = {}
    # Each batch's vectors stay where the forward left them, in plan order; they are scattered
    # into input order once, at the end, through a device index (see `_in_input_order`).
    done: list[tuple[list[int], torch.Tensor]] = []
    retried: set[int] = set()  # inputs that already had their one retry alone after a cleanup
    queue: deque[list[int]] = deque(plan(backend, lengths, budget.current))

    def stage(indices: list[int]) -> Any:
        return backend.stage([prepared[i] for i in indices])

    staged = stage(queue[0]) if queue else None
    while queue:
        indices = queue.popleft()
        out_of_memory = False
        try:
            pooled = backend.forward_staged(staged, pooling_mode)  # launched, not awaited
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            out_of_memory = True
        if out_of_memory:
            # Cleaned up only here, outside the `except` block: while an exception is being
            # handled its traceback holds the failed forward's frames and their activations,
            # and `empty_cache()` could free none of them.
            staged = None
            release_device_memory(backend.device)
            queue = _after_out_of_memory(
                backend, indices, queue, lengths, budget, retried, failures, progress
            )
            if queue:
                staged = stage(queue[0])
            continue
        staged = stage(queue[0]) if queue else None  # host work overlapping the device's
        done.append((indices, postprocess(pooled)))
        budget.record_success()
        if progress is not None:
            progress(len(indices))
    return _in_input_order(done, len(prepared), out_dim, backend.device), failures


def _after_out_of_memory(
    backend: Backend,
    indices: list[int],
    queue: deque[list[int]],
    lengths: Sequence[int],
    budget: TokenBudget,
    retried: set[int],
    failures: dict[int, InputTooLargeForDeviceError],
    progress: Callable[[int], None] | None,
) -> deque[list[int]]:
    """The queue after batch `indices` ran out of memory (the device already cleaned up)."""
    cost = _tokens(backend, lengths, indices)
    if len(indices) == 1:
        position = indices[0]
        if position not in retried:
            # A fragmented allocator is not a too-large input: one more try after the cleanup.
            retried.add(position)
            logger.warning(
                "input of %d tokens ran out of memory alone: retrying it once after freeing "
                "the device's cached memory",
                lengths[position],
            )
            queue.appendleft(indices)
            return queue
        failures[position] = InputTooLargeForDeviceError(
            f"input has {lengths[position]} tokens and ran out of device memory even when "
            "embedded alone; shorten it (max_length) or use a device with more memory"
        )
        logger.warning("input of %d tokens is too large alone: OOM", lengths[position])
        if progress is not None:
            progress(1)
        return queue
    budget.lower(cost)
    logger.warning(
        "out of memory on a batch of %d inputs (%d tokens): split in half; token budget now %d",
        len(indices),
        cost,
        budget.current,
    )
    middle = len(indices) // 2
    rest = [index for batch in queue for index in batch]
    # The halves first (so the retry order stays longest first), then what was still queued,
    # re-planned under the lowered budget.
    replanned = deque([indices[:middle], indices[middle:]])
    if rest:
        again = plan(backend, [lengths[i] for i in rest], budget.current)
        replanned.extend([[rest[j] for j in batch] for batch in again])
    return replanned


def _in_input_order(
    done: list[tuple[list[int], torch.Tensor]], count: int, out_dim: int, device: torch.device
) -> torch.Tensor:
    """(count, out_dim) float32 on `device`: each batch's rows at their inputs' positions, zeros
    for inputs that failed. The positions travel as one index tensor, copied asynchronously from
    pinned memory on a GPU: indexing a device tensor with a Python list would build the index on
    the host and block on the copy (a `cudaStreamSynchronize` per batch, one forward in flight)."""
    vectors = torch.zeros((count, out_dim), dtype=torch.float32, device=device)
    if not done:
        return vectors
    positions = torch.tensor([i for indices, _ in done for i in indices], dtype=torch.long)
    if device.type == "cuda":
        positions = positions.pin_memory()
    positions = positions.to(device, non_blocking=True)
    rows = torch.cat([batch for _, batch in done]).to(torch.float32)
    return vectors.index_copy_(0, positions, rows)
