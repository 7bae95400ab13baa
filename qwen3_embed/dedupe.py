"""Identical inputs embedded once: corpora of chunks repeat boilerplate passages (footers,
licences, navigation) often, and each copy would cost a forward pass for the same vector.

Two prepared inputs are identical when their token ids (prompt, instruction and special tokens
included) and their media arrays are equal, byte for byte; a vector depends on nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .contracts import PreparedInput


def _key(item: PreparedInput) -> tuple:
    if not item.media:
        return (tuple(item.input_ids),)
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(item.media):
        array = item.media[name]
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return (tuple(item.input_ids), digest.digest())


def unique_inputs(prepared: Sequence[PreparedInput]) -> tuple[list[int], list[int]]:
    """(`first`: the position of each distinct input's first occurrence, in order;
    `slot`: for every input, the index into `first` of its distinct input). Embedding
    `[prepared[p] for p in first]` and taking `vectors[slot[i]]` gives every input its vector."""
    first: list[int] = []
    slot: list[int] = []
    seen: dict[tuple, int] = {}
    for position, item in enumerate(prepared):
        key = _key(item)
        index = seen.get(key)
        if index is None:
            index = seen[key] = len(first)
            first.append(position)
        slot.append(index)
    return first, slot
