"""What a (query, document) pair may be, checked the same way for both families."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InputError


def split_pair(pair: Any) -> tuple[Any, Any]:
    """A pair is a 2-item tuple or list (query, document); anything else is an InputError."""
    if isinstance(pair, (str, bytes, Mapping)) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise InputError(
            "a pair must be a (query, document) tuple or list of two items; got "
            f"{type(pair).__name__}" + (f" of {len(pair)} items" if isinstance(pair, list) else "")
        )
    return pair[0], pair[1]


def check_pairs(pairs: Any) -> list[Any]:
    """The call's pairs as a list (a lone pair or string is refused for the whole call)."""
    if isinstance(pairs, (str, bytes, Mapping)) or not isinstance(pairs, Sequence):
        raise InputError(
            f"pairs must be a list of (query, document) pairs; got {type(pairs).__name__}"
        )
    if len(pairs) == 2 and all(isinstance(part, str) for part in pairs):
        raise InputError(
            "pairs must be a list of (query, document) pairs, not one pair; wrap it in a list"
        )
    return list(pairs)


def check_documents(documents: Any) -> list[Any]:
    if isinstance(documents, (str, bytes, Mapping)) or not isinstance(documents, Sequence):
        raise InputError(
            f"documents must be a list of documents; got {type(documents).__name__}; "
            "wrap a single document in a list"
        )
    return list(documents)
