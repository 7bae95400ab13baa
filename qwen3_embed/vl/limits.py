"""Per-item limits on media: how many, how many decoded pixels, how many vision tokens.

A multi-page item can hold many images; each is checked on its own (`MediaOptions.max_pixels`,
`max_bytes`), and `ItemBudget` adds them up for the item as they load, so an item is refused as
soon as it is over, before the rest is read or decoded:

- decoded pixels (`MediaOptions.max_item_pixels`): source pixels of every image and of every
  sampled video frame — bounds the CPU time and memory one item may take;
- vision tokens (the call's `max_length`): the tokens the resized media become, `+2` for each
  medium's vision start/end. Truncation may only drop text, so an item whose media alone exceed
  `max_length` could never be embedded; it is refused before the processor runs
  (`InputTooLongError`, the same error the later full check would give).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError, InputTooLongError


@dataclass
class ItemBudget:
    max_pixels: int
    max_tokens: int
    pixels: int = 0
    tokens: int = 0

    def check_pixels(self, count: int) -> None:
        """Refuse when `count` more decoded pixels would go over the item's limit."""
        if self.pixels + count > self.max_pixels:
            raise InputError(
                f"the item's media add up to more than {self.max_pixels} decoded pixels (the limit "
                f"per item; {self.pixels} before this medium, which has {count}); send fewer or "
                "smaller images or frames"
            )

    def add_pixels(self, count: int) -> None:
        self.check_pixels(count)
        self.pixels += count

    def check_tokens(self, count: int) -> None:
        if self.tokens + count > self.max_tokens:
            raise InputTooLongError(
                f"the item's media need at least {self.tokens + count} tokens, more than "
                f"max_length={self.max_tokens}, and truncation may only drop text; send fewer or "
                "smaller images, a shorter video or use a larger max_length"
            )

    def add_tokens(self, count: int) -> None:
        self.check_tokens(count)
        self.tokens += count
