"""Per-item limits on media: how many, how many decoded pixels, how many vision tokens.

A multi-page item can hold many images; each is checked on its own (`MediaOptions.max_pixels`,
`max_bytes`), and `ItemBudget` adds them up for the item as they load, so an item is refused as
soon as it is over, before the rest is read or decoded:

- decoded pixels (`MediaOptions.max_item_pixels`): source pixels of every image and of every
  sampled video frame — bounds the CPU time and memory one item may take;
- vision tokens (the call's `max_length`): the tokens the resized media become, `+2` for each
  medium's vision start/end. Truncation may only drop text, so an item whose media alone exceed
  `max_length` could never be embedded; it is refused before the processor runs
  (`InputTooLongError`, the same error the later full check would give);
- video decoding (`MediaOptions.max_decoded_frames`, `max_decode_s`): frames decoded (the
  sampled ones and those decoded on the way to them) and seconds spent reading the item's
  videos — a long video of cheap frames passes every size limit, so its work is bounded too
  (`DecodeLimitError`, checked as each frame is decoded).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..errors import DecodeLimitError, InputError, InputTooLongError


@dataclass
class ItemBudget:
    max_pixels: int
    max_tokens: int
    max_decoded_frames: int = 2**62
    max_decode_s: float = math.inf
    pixels: int = 0
    tokens: int = 0
    decoded_frames: int = 0
    decode_started: float | None = None  # time.monotonic() of the first video read

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

    def start_decoding(self) -> None:
        if self.decode_started is None:
            self.decode_started = time.monotonic()

    def check_decode_time(self) -> None:
        self.start_decoding()
        spent = time.monotonic() - self.decode_started
        if spent > self.max_decode_s:
            raise DecodeLimitError(
                f"reading the item's videos took more than {self.max_decode_s:g} s (the limit per "
                "item); send a shorter or smaller video"
            )

    def add_decoded_frame(self) -> None:
        """Count one decoded video frame; refuse the item past its limits."""
        self.decoded_frames += 1
        if self.decoded_frames > self.max_decoded_frames:
            raise DecodeLimitError(
                f"sampling the item's videos needs more than {self.max_decoded_frames} decoded "
                "frames (the limit per item; frames are decoded from the keyframe before each "
                "sampled one); send a shorter video, one with more frequent keyframes, or frames"
            )
        if self.decoded_frames % 64 == 0:
            self.check_decode_time()
