"""`RerankPreparer`: the rerankers' CPU stage alone (tokenizer / processor, no weights).

A batch job's CPU workers build one to validate, format and tokenise (query, document) pairs
before they reach the device actors; `Reranker` holds one too, so both run the same code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..contracts import PreparedInput, PrepareResult
from ..errors import InputError, UnsupportedModelError
from ..model_info import ModelInfo, read_model_info
from ..options import LoadOptions
from ..prompts import check_instruction
from ..registry import SEED_RERANKERS
from ..source import resolve_model_dir
from ..task import require_task
from ..vocabulary import Family
from .formats import DEFAULT_INSTRUCTIONS, DEFAULT_MAX_LENGTHS
from .pairs import check_pairs

if TYPE_CHECKING:
    from ..vl.media import MediaOptions
    from .text import TextRerankPreparer
    from .vl import VLRerankPreparer


def read_reranker_info(source: str, model_dir: Path) -> ModelInfo:
    """The checkpoint's facts, with the reranker's own max length and default instruction."""
    info = read_model_info(model_dir)
    if not info.is_qwen:
        raise UnsupportedModelError(
            f"{source}: a reranker must be a Qwen3 (qwen3) or Qwen3-VL (qwen3_vl) checkpoint; "
            f"this one is {info.model_type!r}"
        )
    known = {model_id.lower(): spec for model_id, spec in SEED_RERANKERS.items()}.get(
        source.strip().lower()
    )
    if known is not None and known[0] != info.family:
        raise UnsupportedModelError(
            f"{source} is a {known[0]} reranker but its config says {info.model_type!r}"
        )
    return dataclasses.replace(
        info,
        max_length=DEFAULT_MAX_LENGTHS[info.family],
        default_query_instruction=DEFAULT_INSTRUCTIONS[info.family],
        pooling_mode="lasttoken",
        normalize=False,
        prompts={},
        default_prompt_name=None,
    )


class RerankPreparer:
    def __init__(
        self,
        impl: TextRerankPreparer | VLRerankPreparer,
        source: str,
        model_dir: Path,
        max_length: int,
    ):
        self.impl = impl
        self.source = source
        self.model_dir = model_dir
        self.max_length = max_length

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        max_length: int | None = None,
        revision: str | None = None,
        media_options: MediaOptions | None = None,
        task: str | None = None,
    ) -> RerankPreparer:
        """`task="rerank"` declares a checkpoint whose task cannot be told (see qwen3_embed.task);
        `media_options` (VL only) says where media may come from and how large they may be;
        `max_length` and `revision` are checked by `LoadOptions`' rules, as every loader's are."""
        options = LoadOptions(model=os.fspath(source), revision=revision, max_length=max_length)
        return cls.from_options(options, media_options, task)

    @classmethod
    def from_options(
        cls,
        options: LoadOptions,
        media_options: MediaOptions | None = None,
        task: str | None = None,
    ) -> RerankPreparer:
        """The tokenizer / processor of the reranker `options` describe (no weights)."""
        source_text = options.model
        model_dir = resolve_model_dir(source_text, options.revision)
        require_task(source_text, model_dir, "rerank", task)
        info = read_reranker_info(source_text, model_dir)
        return cls.from_model_dir(source_text, model_dir, info, options.max_length, media_options)

    @classmethod
    def from_model_dir(
        cls,
        source: str,
        model_dir: Path,
        info: ModelInfo,
        max_length: int | None,
        media_options: MediaOptions | None = None,
    ) -> RerankPreparer:
        # Checked where it enters: `LoadOptions` (from_pretrained and from_options build one).
        assert max_length is None or max_length >= 1, max_length
        if info.family == "vl":
            from .vl import VLRerankPreparer  # imported lazily: needs the [vl] extra

            impl: Any = VLRerankPreparer(model_dir, info, media_options)
        else:
            from .text import TextRerankPreparer

            impl = TextRerankPreparer(model_dir, info)
        return cls(impl, source, model_dir, max_length or info.max_length)

    @property
    def info(self) -> ModelInfo:
        return self.impl.info

    @property
    def family(self) -> Family:
        return self.info.family

    @property
    def default_instruction(self) -> str:
        return DEFAULT_INSTRUCTIONS[self.family]

    @property
    def yes_id(self) -> int:
        return self.impl.yes_id

    @property
    def no_id(self) -> int:
        return self.impl.no_id

    def prepare_pairs(
        self,
        pairs: Sequence[Any],
        instruction: str | None = None,
        truncate: bool = True,
        max_length: int | None = None,
    ) -> list[PrepareResult]:
        """Per pair: a PreparedInput, or the InputError naming its index (never raised for a bad
        pair, so a batch job scores the good ones and reports the rest). `instruction` (None =
        the model's default) applies to every pair; `max_length` overrides the preparer's for
        this call. Call-level mistakes (pairs not a list, a blank instruction) raise."""
        pairs = check_pairs(pairs)
        instruction = check_instruction(instruction) or self.default_instruction
        if max_length is not None and max_length < 1:  # this call's own limit (ours is checked)
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        limit = self.max_length if max_length is None else max_length
        results = self.impl.prepare_pairs(pairs, instruction, truncate, limit)
        return [
            result.at(index) if isinstance(result, InputError) else result
            for index, result in enumerate(results)
        ]

    def prepare(self, pairs: Sequence[Any], *args: Any, **kwargs: Any) -> list[PreparedInput]:
        """`prepare_pairs`, raising the first InputError."""
        results = self.prepare_pairs(pairs, *args, **kwargs)
        for result in results:
            if isinstance(result, InputError):
                raise result
        return results  # type: ignore[return-value]
