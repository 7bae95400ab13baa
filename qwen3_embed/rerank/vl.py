"""The VL reranker's CPU half (Qwen3-VL-Reranker), as `qwen3_vl_reranker.py` does for one pair.

The conversation: system turn = the "Judge whether..." sentence; user turn = `<Instruct>: {instr}`,
`<Query>:`, the query's videos, images, texts, `\n<Document>:`, the document's videos, images,
texts; rendered with `add_generation_prompt=True`. Media are loaded and resized exactly as the VL
embedder does (same constants and frame sampling as the official reranker), the processor runs
without truncation, then the official `truncate_tokens_optimized` rule: of the tokens before the
last 5, special tokens (vision tokens among them) are all kept and the other tokens are kept from
the start up to `max_length` in all; the last 5 (`<|im_end|>\n<|im_start|>assistant\n`) follow.

Unlike the official code: an empty query or document is an error for that pair (never the text
"NULL"); a pair whose media fail to load fails alone (the official code replaces it by "NULL").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..contracts import PreparedInput, PrepareResult
from ..errors import InputError, InputTooLongError
from ..vl.items import VLItem, parse_item
from ..vl.limits import ItemBudget
from ..vl.pixels import pack_media
from ..vl.preparer import VLPreparer
from .formats import (
    NO_TOKEN,
    SYSTEM_PROMPT,
    VL_DOCUMENT_PREFIX,
    VL_INSTRUCT_PREFIX,
    VL_KEPT_TAIL,
    VL_QUERY_PREFIX,
    YES_TOKEN,
)
from .pairs import split_pair
from .text import _token_id


def truncate_keeping_special(ids: list[int], max_length: int, special: frozenset[int]) -> list[int]:
    """The official `truncate_tokens_optimized`: at most `max_length` tokens, every special token
    kept, and of the others the first `max_length - number of special tokens`."""
    if len(ids) <= max_length:
        return ids
    keep = max_length - sum(1 for token in ids if token in special)
    kept: list[int] = []
    for token in ids:
        if token in special:
            kept.append(token)
        elif keep > 0:
            kept.append(token)
            keep -= 1
    return kept


def parse_side(value: Any, what: str) -> VLItem:
    """A query or document: a string or an item dict (text / image / video, lists allowed, and
    fps / max_frames for its video files); the instruction belongs to the pair, not to a side."""
    if isinstance(value, Mapping) and value.get("instruction") is not None:
        raise InputError(
            f"the {what} has an 'instruction'; a reranker takes one instruction per call "
            "(instruction=)"
        )
    try:
        return parse_item(value, None)
    except InputError as error:
        raise InputError(f"{what}: {error.reason}", code=error.code) from None


def content(item: VLItem, prefix: str) -> list[dict[str, Any]]:
    """The official `format_mm_content`: prefix, videos, images, texts (stand-in media values:
    the template is only rendered)."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": prefix}]
    parts += [{"type": "video", "video": None} for _ in item.videos]
    parts += [{"type": "image", "image": None} for _ in item.images]
    parts += [{"type": "text", "text": text} for text in item.texts]
    return parts


def rerank_conversation(query: VLItem, document: VLItem, instruction: str) -> list[dict[str, Any]]:
    user = [{"type": "text", "text": VL_INSTRUCT_PREFIX + instruction}]
    user += content(query, VL_QUERY_PREFIX) + content(document, VL_DOCUMENT_PREFIX)
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": user},
    ]


class VLRerankPreparer(VLPreparer):
    """Pairs -> `PreparedInput`s; media handling and limits are the VL embedder's."""

    def __init__(self, model_dir, info, media_options=None):
        super().__init__(model_dir, info, media_options)
        tokenizer = self.processor.tokenizer
        self.yes_id = tokenizer.get_vocab().get(YES_TOKEN)
        self.no_id = tokenizer.get_vocab().get(NO_TOKEN)
        if self.yes_id is None or self.no_id is None:
            _token_id(tokenizer, YES_TOKEN if self.yes_id is None else NO_TOKEN, model_dir)
        self.special_ids = frozenset(tokenizer.all_special_ids)

    def prepare_pairs(
        self, pairs: Sequence[Any], instruction: str, truncate: bool, max_length: int
    ) -> list[PrepareResult]:
        results: list[PrepareResult] = []
        for pair in pairs:
            try:
                results.append(self.prepare_pair(pair, instruction, truncate, max_length))
            except InputError as error:
                results.append(error)
        return results

    def prepare_pair(
        self, pair: Any, instruction: str, truncate: bool, max_length: int
    ) -> PreparedInput:
        query_value, document_value = split_pair(pair)
        query = parse_side(query_value, "query")
        document = parse_side(document_value, "document")
        limit = self.media_options.max_media_per_item
        if query.num_media + document.num_media > limit:
            raise InputError(
                f"the pair has {query.num_media + document.num_media} media (images and videos), "
                f"more than the limit of {limit} per pair"
            )
        prompt = self.processor.apply_chat_template(
            rerank_conversation(query, document, instruction),
            add_generation_prompt=True,
            tokenize=False,
        )
        merged = VLItem(
            query.texts + document.texts,
            query.images + document.images,
            query.videos + document.videos,
            None,
        )
        self._check_no_reserved_tokens(prompt, merged)
        # Vision tokens are special: truncation never drops them, so media alone over the limit
        # can never fit (refused before the rest is decoded).
        budget = ItemBudget(self.media_options.max_item_pixels, max_length)
        media = self._load_side(query, budget, "query")
        document_media = self._load_side(document, budget, "document")
        media = {key: media[key] + document_media[key] for key in media}
        encoded = self._process(prompt, media, truncation=False, max_length=None)
        ids = encoded["input_ids"][0].tolist()
        body, tail = ids[:-VL_KEPT_TAIL], ids[-VL_KEPT_TAIL:]
        if len(body) > max_length:
            if not truncate:
                raise InputTooLongError(
                    f"the pair has {len(body)} tokens before the closing {VL_KEPT_TAIL} (media "
                    f"included), more than max_length={max_length}; enable truncation or shorten it"
                )
            body = truncate_keeping_special(body, max_length, self.special_ids)
            if len(body) > max_length:
                raise InputTooLongError(
                    f"the pair's special and vision tokens alone take {len(body)} tokens, more "
                    f"than max_length={max_length}, and truncation may only drop text"
                )
        return PreparedInput(input_ids=body + tail, media=pack_media(**media, encoded=encoded))

    def _load_side(self, item: VLItem, budget: ItemBudget, what: str) -> dict[str, list[Any]]:
        try:
            return self._load_media(item, budget)
        except InputError as error:
            raise type(error)(f"{what}: {error.reason}") from None
