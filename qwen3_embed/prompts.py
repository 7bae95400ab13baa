"""Input validation and prompt formats shared by every family."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from .errors import InputError

# The official helper writes no space after "Query:" (model card `get_detailed_instruct`).
QUERY_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"


def format_text_query(text: str, instruction: str | None) -> str:
    """Qwen3-Embedding's query prompt; documents (no instruction) are embedded as raw text."""
    if instruction is None:
        return text
    return QUERY_TEMPLATE.format(instruction=instruction, text=text)


def check_encodable(text: str, what: str, field: str | None = None) -> str:
    """Refuse a string that is not valid Unicode text: a lone surrogate (`"\\ud800"`, which JSON
    and Python accept) cannot be encoded as UTF-8, so no tokenizer, Arrow column or JSON answer
    can carry it. The reason names its position, never the character itself."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code_point = ord(text[error.start])
        raise InputError(
            f"{what} is not valid Unicode text: it holds a lone surrogate U+{code_point:04X} at "
            f"character {error.start}, which cannot be encoded as UTF-8",
            field=field,
        ) from None
    return text


def check_instruction(instruction: Any) -> str | None:
    if instruction is None:
        return None
    if not isinstance(instruction, str):
        raise InputError(
            f"instruction must be a string, got {type(instruction).__name__}", field="instruction"
        )
    if not instruction.strip():
        raise InputError(
            "instruction must not be empty; pass None for documents", field="instruction"
        )
    return check_encodable(instruction, "instruction", "instruction")


def resolve_prompt(
    prompts: Mapping[str, str],
    default_prompt_name: str | None,
    instruction: str | None,
    prompt: str | None,
    prompt_name: str | None,
) -> str | None:
    """The literal prompt of a call, sentence-transformers' way: `prompt` as given, else
    `prompts[prompt_name]`, else the model's default prompt, else none. "" means none.

    Unlike sentence-transformers (which warns and ignores `prompt_name`), two ways of saying what
    to prepend in one call are refused: with `instruction` too, or `prompt` with `prompt_name`,
    one would silently win."""
    given = [
        name
        for name, value in (
            ("instruction", instruction),
            ("prompt", prompt),
            ("prompt_name", prompt_name),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise InputError(
            f"give at most one of instruction, prompt, prompt_name; got {' and '.join(given)}"
        )
    if instruction is not None:
        return None
    if prompt_name is not None:
        if prompt_name not in prompts:
            valid = ", ".join(repr(name) for name in prompts) or "none"
            raise InputError(
                f"prompt_name={prompt_name!r} is not a prompt of this model; valid names are: {valid}",
                field="prompt_name",
            )
        prompt = prompts[prompt_name]
    elif prompt is None and default_prompt_name is not None:
        prompt = prompts[default_prompt_name]
    if prompt is not None and not isinstance(prompt, str):
        raise InputError(f"prompt must be a string, got {type(prompt).__name__}", field="prompt")
    if prompt:
        check_encodable(prompt, "prompt", "prompt")
    return prompt or None


def check_text(text: Any, what: str = "text", field: str | None = None) -> str:
    """`field`: where the text sits in its item (`text`, `text[1]`); None for a bare string item."""
    if text is None:
        raise InputError(f"{what} is None; every input must be a non-empty string", field=field)
    if not isinstance(text, str):
        raise InputError(f"{what} must be a string, got {type(text).__name__}", field=field)
    if not text.strip():
        raise InputError(f"{what} is empty; every input must be a non-empty string", field=field)
    return check_encodable(text, what, field)


def ends_with_punctuation(text: str) -> bool:
    """Unicode punctuation (category P*), as the official VL embedder checks."""
    return bool(text) and unicodedata.category(text[-1]).startswith("P")
