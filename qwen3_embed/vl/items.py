"""A multimodal input item: validation, and the official chat conversation built from it.

An item is a string (a text item) or a dict with any of `text`, `image`, `video`, plus an optional
per-item `instruction` that overrides the call's. The conversation follows the official
`format_model_input`: system turn = instruction (stripped, a `.` appended unless it ends in Unicode
punctuation) else `Represent the user's input.`; user turn content ordered videos, images, texts.
Unlike the official code, an empty item is an error, never the text "NULL".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..prompts import check_instruction, check_text, ends_with_punctuation
from .constants import DEFAULT_INSTRUCTION

ITEM_KEYS = ("text", "image", "video", "instruction")


@dataclass(frozen=True)
class VLItem:
    text: str | None
    image: Any  # an image source (see media.py), or None
    video: Any  # a video source or a list of frame sources, or None
    instruction: str | None


def parse_item(item: Any, instruction: str | None) -> VLItem:
    """Validate one item's shape (media are checked when loaded); raise InputError."""
    if isinstance(item, str):
        return VLItem(check_text(item), None, None, instruction)
    if not isinstance(item, Mapping):
        raise InputError(
            f"an item must be a string or a dict with keys {', '.join(ITEM_KEYS)}; got {type(item).__name__}"
        )
    unknown = [key for key in item if key not in ITEM_KEYS]
    if unknown:
        raise InputError(
            f"unknown key(s) [{', '.join(sorted(map(repr, unknown)))}]; valid keys are: {', '.join(ITEM_KEYS)}"
        )
    text = None if item.get("text") is None else check_text(item["text"])
    image, video = item.get("image"), item.get("video")
    if text is None and image is None and video is None:
        raise InputError("the item is empty; give at least one of text, image, video")
    if item.get("instruction") is not None:
        instruction = check_instruction(item["instruction"])
    return VLItem(text, image, video, instruction)


def system_prompt(instruction: str | None) -> str:
    """The official rule: strip, then end with punctuation; the default when there is none."""
    if instruction is not None:
        instruction = instruction.strip()
        if instruction and not ends_with_punctuation(instruction):
            instruction += "."
    return instruction or DEFAULT_INSTRUCTION


def conversation(item: VLItem) -> list[dict[str, Any]]:
    """The chat messages for the processor's chat template. Media entries carry both the type and
    the key (as the official entries do) so any Qwen-VL template variant renders them; their values
    are stand-ins, as the template is only rendered, never tokenised with media."""
    content: list[dict[str, Any]] = []
    if item.video is not None:
        content.append({"type": "video", "video": None})
    if item.image is not None:
        content.append({"type": "image", "image": None})
    if item.text is not None:
        content.append({"type": "text", "text": item.text})
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt(item.instruction)}]},
        {"role": "user", "content": content},
    ]
