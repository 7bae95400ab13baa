"""Plan batches under a padded-token budget.

Inputs are sorted by length so that each batch holds sequences of similar length (little
padding); a batch grows while `longest_in_batch * batch_size <= max_batch_tokens`. An input
longer than the whole budget is a batch of its own rather than an error.
"""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(
    lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int | None = None
) -> list[list[int]]:
    """Indices into `lengths`, grouped into batches, longest first."""
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        # Sorted descending, so the batch's longest is its first member.
        longest = longest if current else lengths[index]
        full_by_tokens = (len(current) + 1) * longest > max_batch_tokens
        full_by_count = max_batch_size is not None and len(current) >= max_batch_size
        if current and (full_by_tokens or full_by_count):
            batches.append(current)
            current, longest = [], lengths[index]
        current.append(index)
    if current:
        batches.append(current)
    return batches


def padding_ratio(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Padded tokens over real tokens for a plan (1.0 = no padding)."""
    real = sum(lengths)
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return padded / real if real else 1.0
