"""The text reranker's CPU half (Qwen3-Reranker): the model card's prompt and truncation.

Exactly the official block: the pair is formatted as
`<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}`, tokenised with the
tokenizer's own special tokens and `truncation="longest_first"` to
`max_length - len(prefix) - len(suffix)` tokens (the whole formatted text is one sequence, so an
over-long pair loses its end), then wrapped in the prefix and suffix token ids. Pairs are
tokenised together, as the block does for its batch (a fast tokenizer treats each on its own).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..contracts import PreparedInput, PrepareResult
from ..errors import InputError, InputTooLongError, UnsupportedModelError
from ..model_info import ModelInfo
from ..prompts import check_text
from .formats import NO_TOKEN, TEXT_PREFIX, TEXT_SUFFIX, YES_TOKEN, format_text_pair
from .pairs import split_pair


def text_of(value: Any, what: str) -> str:
    """A text query or document: a string, or a dict {"text": ...} (the rerank APIs' objects)."""
    if isinstance(value, Mapping):
        unknown = set(value) - {"text"}
        if unknown:
            raise InputError(
                f"unknown key(s) {sorted(map(str, unknown))} in the {what} for a text reranker; "
                "valid keys are: text"
            )
        value = value.get("text")
    return check_text(value, what)


class TextRerankPreparer:
    """Pairs -> `PreparedInput`s (prefix + truncated pair + suffix token ids)."""

    def __init__(self, model_dir: Path, info: ModelInfo):
        from transformers import AutoTokenizer

        self.info = info
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        tokenizer = self.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.yes_id, self.no_id = (
            _token_id(tokenizer, token, model_dir) for token in (YES_TOKEN, NO_TOKEN)
        )
        self.prefix_ids = tokenizer.encode(TEXT_PREFIX, add_special_tokens=False)
        self.suffix_ids = tokenizer.encode(TEXT_SUFFIX, add_special_tokens=False)

    @property
    def frame_tokens(self) -> int:
        """Tokens around every pair (prefix + suffix)."""
        return len(self.prefix_ids) + len(self.suffix_ids)

    def prepare_pairs(
        self, pairs: Sequence[Any], instruction: str, truncate: bool, max_length: int
    ) -> list[PrepareResult]:
        room = max_length - self.frame_tokens
        if room < 1:
            raise ValueError(
                f"max_length={max_length} leaves no room for a pair: the prompt's prefix and "
                f"suffix alone take {self.frame_tokens} tokens"
            )
        results: list[PrepareResult] = [InputError("not prepared")] * len(pairs)
        texts: list[str] = []
        positions: list[int] = []
        for position, pair in enumerate(pairs):
            try:
                query, document = split_pair(pair)
                texts.append(
                    format_text_pair(
                        text_of(query, "query"), text_of(document, "document"), instruction
                    )
                )
            except InputError as error:
                results[position] = error
                continue
            positions.append(position)
        if texts:
            encoded = self.tokenizer(
                texts,
                padding=False,
                truncation="longest_first" if truncate else False,
                return_attention_mask=False,
                max_length=room if truncate else None,
            )["input_ids"]
        else:
            encoded = []
        for position, ids in zip(positions, encoded, strict=True):
            if len(ids) > room:
                results[position] = InputTooLongError(
                    f"the pair has {len(ids) + self.frame_tokens} tokens with the prompt, more "
                    f"than max_length={max_length}; enable truncation or shorten it"
                )
            else:
                results[position] = PreparedInput(self.prefix_ids + ids + self.suffix_ids)
        return results


def _token_id(tokenizer: Any, token: str, model_dir: Path) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise UnsupportedModelError(
            f"{model_dir}: the tokenizer has no {token!r} token, which a Qwen3 reranker reads "
            "its score from; is this a reranker checkpoint?"
        )
    return token_id
