"""Plan batches under a token budget: padded (`plan_batches`) or packed (`plan_packed_batches`).

Inputs are sorted by length so that each batch holds sequences of similar length. A batch grows
while `longest_in_batch * batch_size <= max_batch_tokens`, and also stops growing once it is
reasonably full (1/16 of the budget: big enough to keep matrix units busy) and the next, shorter input would push its padding
above `max_padding_ratio` — so long-tail corpora do not pay for padding. An input longer than
the whole budget is a batch of its own rather than an error.

A packed batch costs its real tokens only (no padding), so `plan_packed_batches` fills the budget
with real tokens: no padding cut, no small-batch stop. Sorting longest first still helps there:
the largest forwards run first, so an out-of-memory error shows early and lowers the budget for
the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_MAX_PADDING_RATIO = 1.05


def plan_batches(
    lengths: Sequence[int],
    max_batch_tokens: int,
    max_batch_size: int | None = None,
    max_padding_ratio: float = DEFAULT_MAX_PADDING_RATIO,
) -> list[list[int]]:
    """Indices into `lengths`, grouped into batches, longest first."""
    assert max_batch_tokens >= 1, max_batch_tokens  # a TokenBudget's, never below 1
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = real_tokens = 0
    for index in order:
        length = lengths[index]
        if current:
            padded_after = (len(current) + 1) * longest  # sorted descending: the first is longest
            full_by_tokens = padded_after > max_batch_tokens
            full_by_count = max_batch_size is not None and len(current) >= max_batch_size
            wasteful = real_tokens * 16 >= max_batch_tokens and padded_after > max_padding_ratio * (
                real_tokens + length
            )
            if full_by_tokens or full_by_count or wasteful:
                batches.append(current)
                current, real_tokens = [], 0
        if not current:
            longest = length
        current.append(index)
        real_tokens += length
    if current:
        batches.append(current)
    return batches


def plan_packed_batches(
    lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int | None = None
) -> list[list[int]]:
    """Indices into `lengths`, each batch holding at most `max_batch_tokens` real tokens (an
    input longer than that is a batch of its own). Each batch takes the longest inputs left while
    they fit, then fills the room left with the shortest ones, so budgets end up nearly full."""
    assert max_batch_tokens >= 1, max_batch_tokens  # a TokenBudget's, never below 1
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    low, high = 0, len(order) - 1  # next longest / next shortest not yet planned

    def has_room(batch: list[int], tokens: int, index: int) -> bool:
        fits_count = max_batch_size is None or len(batch) < max_batch_size
        return fits_count and tokens + lengths[index] <= max_batch_tokens

    while low <= high:
        batch, tokens = [order[low]], lengths[order[low]]
        low += 1
        while low <= high and has_room(batch, tokens, order[low]):
            batch.append(order[low])
            tokens += lengths[order[low]]
            low += 1
        while low <= high and has_room(batch, tokens, order[high]):
            batch.append(order[high])
            tokens += lengths[order[high]]
            high -= 1
        batches.append(batch)
    return batches


def padding_ratio(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Padded tokens over real tokens for a plan (1.0 = no padding)."""
    real = sum(lengths)
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return padded / real if real else 1.0
