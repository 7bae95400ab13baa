"""Choices the serving layer makes where the core's defaults suit batch work but not an online
replica: the forward mode on CPU, the admission bound of a request before it is tokenised, and
the size of the token queue. (Torch-free at import; the core is imported inside functions.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

# media keys of a VL item (qwen3_embed.vl.pixels.MEDIA_KEYS, without importing the [vl] extra)
_MEDIA_KEYS = ("image", "video")

# With max_queued_tokens auto (None): the queue holds what this replica finishes, at its measured
# rate, in this many seconds: half the ingress -> model timeout's default (30 s), so that admitted
# work is done with the other half left for preparing it and the batch already running.
QUEUE_TIME_BUDGET_S = 15.0
# Weight of the newest batch in the measured rate (exponential moving average).
_RATE_WEIGHT = 0.3
# The queue bound follows the rate only when it moves by more than this share.
_RESIZE_STEP = 0.05


def serving_load_options(options: Any) -> Any:
    """The `LoadOptions` a replica loads with: as given, except `forward_mode: auto` on a CPU for
    a model that can run packed, which serves packed. Measured on 2 cores (benchmarks/README.md,
    online serving): requests of mixed lengths batched by the replica ran 1.3-3x faster per
    text packed than padded (a padded batch pads every text to its longest). On a GPU `auto`
    stays the core's choice (packed where its varlen kernel runs)."""
    from qwen3_embed.device import resolve_device
    from qwen3_embed.model_info import read_model_info
    from qwen3_embed.registry import lookup
    from qwen3_embed.source import resolve_model_dir

    if options.forward_mode != "auto" or resolve_device(options.device).type != "cpu":
        return options
    info = read_model_info(
        resolve_model_dir(options.model, options.revision), lookup(options.model)
    )
    if info.family == "text" and info.is_qwen:  # what the core's packed forward runs
        return dataclasses.replace(options, forward_mode="packed")
    return options


def has_media(items: Sequence[Any]) -> bool:
    """Whether any item carries an image or a video (a VL item)."""
    return any(
        isinstance(item, dict) and any(item.get(key) is not None for key in _MEDIA_KEYS)
        for item in items
    )


def _utf8_length(value: Any) -> int:
    if not isinstance(value, str):
        return 0  # not text: the preparer refuses it
    # surrogatepass: a lone surrogate (which the preparer refuses) must not fail the estimate.
    return len(value.encode("utf-8", "surrogatepass"))


def token_upper_bound(item: Any, instruction: str | None, prompt_tokens: int, cap: int) -> int:
    """At most how many tokens `item` will have, from its length alone (no tokenising): every
    token of a byte-level BPE (Qwen3) or WordPiece vocabulary covers at least one byte of the
    text, so its UTF-8 bytes plus the instruction's plus the prompt's own tokens bound it. An
    item never enters the queue with more than `cap` (max_length: truncated, or refused), and
    an item with media counts `cap` (its vision tokens are bounded by max_length too)."""
    if isinstance(item, dict):
        if any(item.get(key) is not None for key in _MEDIA_KEYS):
            return cap
        own = item.get("instruction")
        text_bytes = _utf8_length(item.get("text"))
        instruction_bytes = _utf8_length(own if own is not None else instruction)
    else:
        text_bytes = _utf8_length(item)
        instruction_bytes = _utf8_length(instruction)
    return max(1, min(cap, prompt_tokens + text_bytes + instruction_bytes))


class QueueSizer:
    """`max_queued_tokens`: the configured number, or (None) the tokens this replica finishes in
    QUEUE_TIME_BUDGET_S at the rate its batches have run (never below one full batch,
    `floor`, which is also the bound before the first batch)."""

    def __init__(self, fixed: int | None, floor: int) -> None:
        self.fixed = fixed
        self.floor = floor
        self.tokens_per_s: float | None = None
        self.max_queued_tokens = fixed if fixed is not None else floor

    def record(self, tokens: int, seconds: float) -> bool:
        """One batch ran: `tokens` in `seconds`. True when the bound changed."""
        if self.fixed is not None or seconds <= 0 or tokens <= 0:
            return False
        rate = tokens / seconds
        previous = self.tokens_per_s
        self.tokens_per_s = (
            rate if previous is None else previous + _RATE_WEIGHT * (rate - previous)
        )
        wanted = max(self.floor, int(self.tokens_per_s * QUEUE_TIME_BUDGET_S))
        if abs(wanted - self.max_queued_tokens) <= _RESIZE_STEP * self.max_queued_tokens:
            return False
        self.max_queued_tokens = wanted
        return True


__all__ = [
    "QUEUE_TIME_BUDGET_S",
    "QueueSizer",
    "has_media",
    "serving_load_options",
    "token_upper_bound",
]
