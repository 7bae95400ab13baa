"""`Preparer`: the CPU stage alone (tokenizer / processor, no weights).

Batch jobs build one in each CPU worker to validate, format and tokenise rows before they reach
the GPU actors; `Embedder` holds one too, so both paths run the very same code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .contracts import InputPreparer, PreparedInput, PrepareResult
from .errors import InputError
from .model_info import ModelInfo, read_model_info
from .options import LoadOptions
from .prompts import check_instruction, resolve_prompt
from .registry import lookup
from .source import resolve_model_dir
from .task import require_task

if TYPE_CHECKING:
    from .vl.media import MediaOptions


class Preparer:
    def __init__(self, impl: InputPreparer, source: str, model_dir: Path, max_length: int):
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
    ) -> Preparer:
        """`media_options` (VL only) says where images/videos may come from and how big they may be.
        `max_length` and `revision` are checked by `LoadOptions`' rules, as every loader's are."""
        options = LoadOptions(model=os.fspath(source), revision=revision, max_length=max_length)
        return cls.from_options(options, media_options)

    @classmethod
    def from_options(
        cls, options: LoadOptions, media_options: MediaOptions | None = None
    ) -> Preparer:
        """The tokenizer / processor of the model `options` describe (no weights)."""
        source_text = options.model
        model_dir = resolve_model_dir(source_text, options.revision)
        require_task(source_text, model_dir, "embed")  # a reranker is refused, naming Reranker
        info = read_model_info(model_dir, lookup(source_text))
        return cls.from_model_dir(source_text, model_dir, info, options.max_length, media_options)

    @classmethod
    def from_model_dir(
        cls,
        source: str,
        model_dir: Path,
        info: ModelInfo,
        max_length: int | None,
        media_options: MediaOptions | None = None,
    ) -> Preparer:
        # Checked where it enters: `LoadOptions` (from_pretrained and from_options build one).
        assert max_length is None or max_length >= 1, max_length
        impl = _load_input_preparer(model_dir, info, media_options)
        return cls(impl, source, model_dir, max_length or info.max_length)

    @property
    def info(self) -> ModelInfo:
        return self.impl.info

    def validate_dim(self, dim: int | None, name: str = "dim") -> int:
        """The output dimension for `dim` (None = full size); a `DimensionError` (a ValueError)
        names the valid range, and the value as its caller's field `name` calls it (the HTTP
        API's `dimensions`). Needs no weights, so a batch job's driver checks it before
        starting any worker. The rule is `ModelInfo.output_dim`."""
        return self.info.output_dim(dim, name)

    @property
    def prompts(self) -> dict[str, str]:
        """The model's named prompts (config_sentence_transformers.json), name -> literal prefix."""
        return dict(self.info.prompts)

    def resolve_prompt(
        self,
        instruction: str | None = None,
        prompt: str | None = None,
        prompt_name: str | None = None,
    ) -> str | None:
        """The literal prompt a call applies (see `prompts.resolve_prompt`); raises InputError."""
        instruction = check_instruction(instruction)
        resolved = resolve_prompt(
            self.info.prompts, self.info.default_prompt_name, instruction, prompt, prompt_name
        )
        if resolved is not None and self.info.family == "vl":
            check_instruction(resolved)  # it becomes the system turn: must not be blank
        return resolved

    def prepare_each(
        self,
        inputs: Sequence[Any],
        instruction: str | None = None,
        truncate: bool = True,
        max_length: int | None = None,
        *,
        prompt: str | None = None,
        prompt_name: str | None = None,
    ) -> list[PrepareResult]:
        """Per item: a PreparedInput, or the InputError (with its index). Never raises for a bad
        item, so batch jobs can embed the good ones and report the rest. `max_length` overrides
        the preparer's own for this call (the server's per-request `truncate_prompt_tokens`, and
        its /tokenize, which counts over-long inputs instead of refusing them).

        `prompt_name` picks one of `prompts`; `prompt` is a literal one (sentence-transformers'
        `encode` arguments): prepended to each text, or the system turn of a VL model. Neither
        combines with `instruction`. A model whose config names a `default_prompt_name` gets
        that prompt when a call gives none of the three, as in sentence-transformers."""
        instruction = check_instruction(instruction)
        resolved = self.resolve_prompt(instruction, prompt, prompt_name)
        if max_length is not None and max_length < 1:  # this call's own limit (ours is checked)
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        limit = self.max_length if max_length is None else max_length
        results = self.impl.prepare_items(
            list(inputs), instruction, truncate, limit, prompt=resolved
        )
        return [
            result.at(index) if isinstance(result, InputError) else result
            for index, result in enumerate(results)
        ]

    def prepare(self, inputs: Sequence[Any], *args: Any, **kwargs: Any) -> list[PreparedInput]:
        """Validate and tokenise every input; raises the first InputError (naming its index).
        The arguments are `prepare_each`'s."""
        if isinstance(inputs, (str, bytes, dict)):
            raise InputError("inputs must be a list of items, not a single item; wrap it in a list")
        results = self.prepare_each(inputs, *args, **kwargs)
        for result in results:
            if isinstance(result, InputError):
                raise result
        return results  # type: ignore[return-value]


def _load_input_preparer(
    model_dir: Path, info: ModelInfo, media_options: MediaOptions | None
) -> InputPreparer:
    if info.family == "vl":
        from .vl.preparer import VLPreparer  # imported lazily: needs the [vl] extra

        return VLPreparer(model_dir, info, media_options)
    from .text.backend import TextPreparer

    return TextPreparer(model_dir, info)
