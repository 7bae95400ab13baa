"""The forward loop of one `embed_prepared` call: plan batches under the token budget, overlap the
host work of the next batch with the device work of the current one, and survive OOM.

- Overlap: a GPU runs kernels asynchronously, so once batch i's forward is launched the host is
  free; it stages batch i+1 (pack or pad, pin) before touching batch i's result. Vectors stay on
  the device, written into one (N, dim) tensor; the caller copies it to the host once per call.
- OOM: a batch that runs out of device memory is split in half and both halves go back to the
  front of the queue; the budget drops to half the failed batch's tokens for the rest of the
  call (and later calls: it lives on the Embedder) and grows back slowly after successes. An
  input that runs out of memory alone is reported for that input only (its token count named);
  every other input still gets its vector, none is dropped.
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
    vectors = torch.zeros((len(prepared), out_dim), dtype=torch.float32, device=backend.device)
    failures: dict[int, InputTooLargeForDeviceError] = {}
    queue: deque[list[int]] = deque(plan(backend, lengths, budget.current))

    def stage(indices: list[int]) -> Any:
        return backend.stage([prepared[i] for i in indices])

    staged = stage(queue[0]) if queue else None
    while queue:
        indices = queue.popleft()
        try:
            pooled = backend.forward_staged(staged, pooling_mode)  # launched, not awaited
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            del error  # drop the traceback's references to the failed forward's tensors
            release_device_memory(backend.device)
            staged = None
            cost = _tokens(backend, lengths, indices)
            if len(indices) == 1:
                position = indices[0]
                failures[position] = InputTooLargeForDeviceError(
                    f"input has {lengths[position]} tokens and ran out of device memory even when "
                    "embedded alone; shorten it (max_length) or use a device with more memory"
                )
                logger.warning("input of %d tokens is too large alone: OOM", lengths[position])
                if progress is not None:
                    progress(1)
            else:
                budget.lower(cost)
                logger.warning(
                    "out of memory on a batch of %d inputs (%d tokens): split in half; "
                    "token budget now %d",
                    len(indices),
                    cost,
                    budget.current,
                )
                middle = len(indices) // 2
                rest = [index for batch in queue for index in batch]
                # The halves first (so the retry order stays longest first), then what was still
                # queued, re-planned under the lowered budget.
                queue = deque([indices[:middle], indices[middle:]])
                if rest:
                    replanned = plan(backend, [lengths[i] for i in rest], budget.current)
                    queue.extend([[rest[j] for j in batch] for batch in replanned])
            if queue:
                staged = stage(queue[0])
            continue
        staged = stage(queue[0]) if queue else None  # host work overlapping the device's
        vectors[indices] = postprocess(pooled)
        budget.record_success()
        if progress is not None:
            progress(len(indices))
    return vectors, failures
