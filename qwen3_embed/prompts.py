"""Input validation and prompt formats shared by every family."""

from __future__ import annotations

import unicodedata
from typing import Any

from .errors import InputError

# The official helper writes no space after "Query:" (model card `get_detailed_instruct`).
QUERY_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"


def format_text_query(text: str, instruction: str | None) -> str:
    """Qwen3-Embedding's query prompt; documents (no instruction) are embedded as raw text."""
    if instruction is None:
        return text
    return QUERY_TEMPLATE.format(instruction=instruction, text=text)


def check_instruction(instruction: Any) -> str | None:
    if instruction is None:
        return None
    if not isinstance(instruction, str):
        raise InputError(f"instruction must be a string, got {type(instruction).__name__}")
    if not instruction.strip():
        raise InputError("instruction must not be empty; pass None for documents")
    return instruction


def check_text(text: Any, what: str = "text") -> str:
    if text is None:
        raise InputError(f"{what} is None; every input must be a non-empty string")
    if not isinstance(text, str):
        raise InputError(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"{what} is empty; every input must be a non-empty string")
    return text


def ends_with_punctuation(text: str) -> bool:
    """Unicode punctuation (category P*), as the official VL embedder checks."""
    return bool(text) and unicodedata.category(text[-1]).startswith("P")
