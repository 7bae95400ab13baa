"""A multimodal input item: validation, and the official chat conversation built from it.

An item is a string (a text item) or a dict with any of `text`, `image`, `video` — each a single
value or a list — plus optional per-item `instruction` (overrides the call's), `fps` and
`max_frames` (override the defaults for the item's video *files*). One item is one conversation
and one vector, as in the official `format_model_input`: system turn = instruction (stripped, a
`.` appended unless it ends in Unicode punctuation) else `Represent the user's input.`; user turn
content = every video, then every image, then every text, each in list order.

`video` follows the official `is_video_input` rule: a single value is one video; a list whose
first element is an image (see `looks_like_image`) is ONE video given as frames; any other list
is several videos, each a file source or a frame list.

Unlike the official code: an empty item (or an empty list, or an empty frame list) is an error,
never the text "NULL" nor silently nothing; `fps`/`max_frames` that the official code would
silently replace by the defaults (0, None-like) or that no video file would use are refused.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from ..errors import InputError
from ..prompts import check_instruction, check_text, ends_with_punctuation
from .constants import DEFAULT_INSTRUCTION

ITEM_KEYS = ("text", "image", "video", "instruction", "fps", "max_frames")
# The official `is_image_path` extensions (".tif" is not among them there either).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tiff", ".svg"})


@dataclass(frozen=True)
class VLItem:
    texts: tuple[str, ...]
    images: tuple[Any, ...]  # image sources (see media.py)
    videos: tuple[Any, ...]  # each a video file source, or a list of frame sources
    instruction: str | None
    fps: float | None = None  # per-item override for video files
    max_frames: int | None = None  # per-item override for video files

    @property
    def num_media(self) -> int:
        return len(self.images) + len(self.videos)


def is_frame_list(video: Any) -> bool:
    return isinstance(video, (list, tuple))


def looks_like_image(value: Any) -> bool:
    """The official `is_video_input` test on a list's first element, extended to the sources this
    project accepts besides paths and PIL images: numpy arrays, `data:image/...` URIs, and bytes
    whose header PIL recognises as an image (bytes carry no file name to judge by)."""
    if isinstance(value, (Image.Image, np.ndarray)):
        return True
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        if value[:5].lower() == "data:":
            return value[5:11].lower() == "image/"
        # The official `is_image_path`: the URL's path for http(s), else the whole string.
        path = urlparse(value).path if value.startswith(("http://", "https://")) else value
        return os.path.splitext(path.lower())[1] in IMAGE_EXTENSIONS
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            with Image.open(io.BytesIO(bytes(value[:65536]))):  # the header is enough
                return True
        except Image.DecompressionBombError:
            return True  # an image, too large: refused as such when it is loaded
        except Exception:  # noqa: BLE001 - PIL raises many types for "not an image I know"
            return False
    return False


def split_videos(video: Any) -> list[Any]:
    """The official `is_video_input` + normalisation: the item's list of videos."""
    if not is_frame_list(video):
        return [video]
    if len(video) == 0:
        raise InputError("video is an empty list; omit the key or give a video or its frames")
    if looks_like_image(video[0]):
        return [list(video)]  # one video, given as frames
    return list(video)  # several videos


def _as_list(value: Any, key: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        return [value]
    if len(value) == 0:
        raise InputError(f"{key} is an empty list; omit the key or give at least one {key}")
    return list(value)


def _check_fps(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"fps must be a finite number > 0, got {value!r}")
    if value <= 0:
        raise InputError(
            f"fps must be > 0 (frames sampled per second of a video file), got {value!r}"
        )
    return float(value)


def _check_max_frames(value: Any) -> int | None:
    if value is None:
        return None
    # qwen-vl-utils rounds max_frames down to an even number and needs at least 2 frames.
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise InputError(f"max_frames must be an integer >= 2, got {value!r}")
    return value


def parse_item(item: Any, instruction: str | None) -> VLItem:
    """Validate one item's shape (media are checked when loaded); raise InputError."""
    if isinstance(item, str):
        return VLItem((check_text(item),), (), (), instruction)
    if not isinstance(item, Mapping):
        raise InputError(
            f"an item must be a string or a dict with keys {', '.join(ITEM_KEYS)}; got {type(item).__name__}"
        )
    unknown = [key for key in item if key not in ITEM_KEYS]
    if unknown:
        raise InputError(
            f"unknown key(s) [{', '.join(sorted(map(repr, unknown)))}]; valid keys are: {', '.join(ITEM_KEYS)}"
        )
    texts = _as_list(item.get("text"), "text")
    for position, text in enumerate(texts):
        where = "text" if len(texts) == 1 else f"text[{position}]"
        check_text(text, where, field=where)
    images = _as_list(item.get("image"), "image")
    videos = [] if item.get("video") is None else split_videos(item["video"])
    for position, video in enumerate(videos):
        if is_frame_list(video) and len(video) == 0:
            raise InputError(f"video[{position}] is an empty frame list")
    if not texts and not images and not videos:
        raise InputError("the item is empty; give at least one of text, image, video")
    fps, max_frames = _check_fps(item.get("fps")), _check_max_frames(item.get("max_frames"))
    if (fps is not None or max_frames is not None) and all(map(is_frame_list, videos)):
        # The official code samples frame lists with the embedder's own max_frames, whatever the
        # item says: a key that changes nothing is refused rather than silently ignored.
        raise InputError(
            "fps and max_frames apply to video files only, and this item has none (a frame list "
            "is kept as it is up to 64 frames, and sampled down to 64 beyond)"
        )
    if item.get("instruction") is not None:
        instruction = check_instruction(item["instruction"])
    return VLItem(tuple(texts), tuple(images), tuple(videos), instruction, fps, max_frames)


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
    content += [{"type": "video", "video": None} for _ in item.videos]
    content += [{"type": "image", "image": None} for _ in item.images]
    content += [{"type": "text", "text": text} for text in item.texts]
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt(item.instruction)}]},
        {"role": "user", "content": content},
    ]


def describe_media(item: VLItem) -> Sequence[str]:
    """Labels for error messages: `image`, `image[1]`, `video[0]`, ... as the item was written."""
    images = (
        ["image"] if len(item.images) == 1 else [f"image[{i}]" for i in range(len(item.images))]
    )
    videos = (
        ["video"] if len(item.videos) == 1 else [f"video[{i}]" for i in range(len(item.videos))]
    )
    return videos + images
