"""Read a byte stream up to a limit, refusing it as soon as it is known to be too large: from
its declared length before reading, else the moment the running total passes the limit. Used for
request bodies and for fetched media alike."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def read_bounded(
    chunks: AsyncIterator[bytes], declared_length: str, limit: int, too_large: Exception
) -> bytes:
    """All of `chunks`, or `too_large` raised once more than `limit` bytes are declared or seen."""
    if declared_length.isdigit() and int(declared_length) > limit:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)
