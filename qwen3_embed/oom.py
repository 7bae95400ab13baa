"""Out-of-memory handling shared by every caller of the core: what counts as OOM, and the token
budget that shrinks on OOM and grows back slowly.

The budget lives on the `Embedder`, so a batch job's actor or a Serve replica that hit OOM once
keeps forwards smaller for the batches that follow (and for later calls), instead of failing and
splitting again on every batch.
"""

from __future__ import annotations

import gc

import torch

# After this many forwards without OOM, the budget grows by 1/RECOVERY_STEP of itself (capped at
# the configured maximum): slow enough that a device near its limit does not oscillate.
RECOVERY_AFTER = 16
RECOVERY_STEP = 8

_OOM_TEXTS = ("out of memory", "can't allocate memory", "failed to allocate")


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA OOM (`torch.OutOfMemoryError`), and allocator failures of other devices, which
    surface as a RuntimeError whose message says so (CPU, MPS, XPU)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(
        text in str(error).lower() for text in _OOM_TEXTS
    )


def release_device_memory(device: torch.device) -> None:
    """Give cached blocks back after an OOM, so the halves of the failed batch can allocate.
    Call it once the failed forward's exception is gone (outside the `except` block): until then
    its traceback keeps the forward's tensors alive. `gc.collect()` first frees what only
    reference cycles still hold (exceptions and frames form them easily)."""
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


class TokenBudget:
    """Tokens per forward: `maximum` until an OOM, then half the failed batch, recovering slowly."""

    def __init__(self, maximum: int):
        assert maximum >= 1, maximum  # max_batch_tokens, checked by `LoadOptions`
        self.maximum = maximum
        self.current = maximum
        self._successes = 0

    def lower(self, failed_batch_tokens: int) -> None:
        """An OOM at `failed_batch_tokens`: the next forwards stay at half of that, at most."""
        self.current = max(1, min(self.current, failed_batch_tokens // 2))
        self._successes = 0

    def record_success(self) -> None:
        if self.current >= self.maximum:
            return
        self._successes += 1
        if self._successes >= RECOVERY_AFTER:
            self._successes = 0
            self.current = min(self.maximum, self.current + max(1, self.current // RECOVERY_STEP))
