"""The API's `input` field -> core items, enforcing the per-request limits.

Text models take strings (or `{text, instruction}` objects); VL models also take objects with
`image` / `video` (each a single value or a list, `text` too) and `fps` / `max_frames`. Media
arrive as base64 data URIs or, when enabled, http(s) URLs; this module turns both into bytes
here, in the ingress, so no path or URL ever reaches a model replica. Local paths and file:// URLs
are refused whatever the configuration. Every medium (image, video file, frame) is checked on its
own (SSRF rules, `max_media_bytes`, `max_image_pixels`), and an item's media together against
`max_item_media_bytes`. Everything else about an item (empty text, bad instruction, undecodable
video, too many media) is the core's to judge, in the model replica.

A `video` list is read with the core's own rule (`qwen3_embed.vl.items.looks_like_image`, the
official `is_video_input`: a list whose first element is an image is one video given as frames,
any other list is several videos, each a file or a nested frame list). The model replica gets
bytes, and tells an image from a video file by its content; so does the ingress, once the first
element is loaded, and only then checks each frame as an image: both read the list the same way,
whatever name or MIME type the client gave. That function is the only part of the core the
ingress imports (numpy + PIL, no torch).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from qwen3_embed.data_uri import DataUriTooLargeError, decode_data_uri
from qwen3_embed.errors import InputError

from .config import MediaPolicy, RequestLimits
from .errors import ApiError
from .media_fetch import FetchRefused, SafeMediaFetcher

ITEM_KEYS = ("text", "image", "video", "instruction", "fps", "max_frames")
MEDIA_KEYS = ("image", "video")


def split_input(raw: str | list[Any], instruction: str | None, limits: RequestLimits) -> list[Any]:
    """`input` as a list of items, with the count and character limits checked."""
    items = [raw] if isinstance(raw, str) else list(raw)
    if not items:
        raise ApiError(
            400,
            "input must not be empty; send a string or a non-empty list",
            code="empty_input",
            param="input",
        )
    if len(items) > limits.max_inputs_per_request:
        raise ApiError(
            400,
            f"input has {len(items)} items, more than the limit of {limits.max_inputs_per_request} per request",
            code="too_many_inputs",
            param="input",
        )
    chars = len(instruction or "")
    for index, item in enumerate(items):
        chars += _item_chars(item, index)
    if chars > limits.max_chars_per_request:
        raise ApiError(
            413,
            f"the request has {chars} characters of text, more than the limit of {limits.max_chars_per_request}",
            code="request_too_large",
            param="input",
        )
    return items


def _item_chars(item: Any, index: int) -> int:
    if isinstance(item, str):
        return len(item)
    if isinstance(item, dict):
        unknown = sorted(str(key) for key in item if key not in ITEM_KEYS)
        if unknown:
            raise ApiError(
                400,
                f"input[{index}]: unknown key(s) {unknown}; valid keys are: {', '.join(ITEM_KEYS)}",
                code="invalid_input",
                param=f"input[{index}]",
            )
        texts = item.get("text")
        texts = texts if isinstance(texts, list) else [texts]
        for position, value in enumerate(texts):
            if value is not None and not isinstance(value, str):
                where = f"input[{index}].text" + (f"[{position}]" if len(texts) > 1 else "")
                raise ApiError(
                    400,
                    f"{where} must be a string or a list of strings, got {_json_type(value)}",
                    code="invalid_input",
                    param=where,
                )
        instruction = item.get("instruction")
        if instruction is not None and not isinstance(instruction, str):
            raise ApiError(
                400,
                f"input[{index}].instruction must be a string, got {_json_type(instruction)}",
                code="invalid_input",
                param=f"input[{index}].instruction",
            )
        return sum(len(text or "") for text in texts) + len(instruction or "")
    if isinstance(item, (int, list)) and not isinstance(item, bool):
        # OpenAI's API takes token ids of OpenAI's tokenizers; embedded as Qwen ids they would
        # be other text, silently. LangChain's OpenAIEmbeddings sends them by default.
        raise ApiError(
            400,
            f"input[{index}]: token-id inputs are not accepted: this server tokenises text with "
            "the model's own tokenizer, and ids from another tokenizer (such as the tiktoken ids "
            "LangChain's OpenAIEmbeddings sends by default) would embed different text. Send "
            "strings; with LangChain, set OpenAIEmbeddings(..., check_embedding_ctx_length=False). "
            "To size inputs with this model's tokenizer, use POST /tokenize",
            code="token_ids_not_supported",
            param=f"input[{index}]",
        )
    reason = (
        f"must be a string or an object with keys {', '.join(ITEM_KEYS)}, got {_json_type(item)}"
    )
    raise ApiError(400, f"input[{index}]: {reason}", code="invalid_input", param=f"input[{index}]")


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", type(None): "null", list: "array"}.get(
        type(value), type(value).__name__
    )


@dataclass(frozen=True)
class MediaSlot:
    """One media source in the request: its item, key and position inside that key's value as
    the client wrote it (`video[1][3]` = frame 3 of the item's second video)."""

    item: int
    key: str  # "image" | "video"
    path: tuple[int, ...]
    source: str
    is_url: bool
    # True: an image or a video frame (checked as an image); False: a video file; None: an element
    # of a `video` list, a frame or a file depending on the list's first element (load_media)
    is_image: bool | None

    @property
    def param(self) -> str:
        return f"input[{self.item}].{self.key}" + "".join(f"[{p}]" for p in self.path)


def find_media(
    items: Sequence[Any], family: str, model: str, policy: MediaPolicy
) -> list[MediaSlot]:
    """Every media source, classified; refuses media for text models, paths, file:// and (unless
    enabled) URLs, before anything is read or fetched."""
    slots: list[MediaSlot] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        for key in MEDIA_KEYS:
            value = item.get(key)
            if value is None:
                continue
            if family != "vl":
                raise ApiError(
                    400,
                    f"input[{index}].{key}: model {model!r} embeds text only; images and videos need a VL model",
                    code="unsupported_input",
                    param=f"input[{index}].{key}",
                )
            slots += _media_slots(index, key, value, policy)
    if len(slots) > policy.max_media_per_request:
        raise ApiError(
            413,
            f"the request has {len(slots)} media (images, videos, frames), more than the limit of {policy.max_media_per_request}",
            code="too_many_media",
            param="input",
        )
    return slots


def _media_slots(index: int, key: str, value: Any, policy: MediaPolicy) -> list[MediaSlot]:
    """The slots of one item's `image` or `video` value (empty lists are the core's to refuse)."""
    if not isinstance(value, list):
        return [_classify(index, key, (), value, policy, is_image=key == "image")]
    if key == "image":
        return [
            _classify(index, key, (i,), one, policy, is_image=True) for i, one in enumerate(value)
        ]
    slots = []
    for position, video in enumerate(value):
        if isinstance(video, list):  # a nested list is a frame list (or, inside frames, an error)
            slots += [
                _classify(index, key, (position, i), one, policy, is_image=True)
                for i, one in enumerate(video)
            ]
        else:  # a frame or a file: decided by the list's first element, once loaded
            slots.append(_classify(index, key, (position,), video, policy, is_image=None))
    return slots


def _classify(
    index: int, key: str, path: tuple[int, ...], source: Any, policy: MediaPolicy, is_image: bool
) -> MediaSlot:
    where = f"input[{index}].{key}" + "".join(f"[{p}]" for p in path)
    if not isinstance(source, str):
        raise ApiError(
            400,
            f"{where} must be a string: a base64 data URI or an http(s) URL, got {_json_type(source)}",
            code="invalid_media",
            param=where,
        )
    text = source.strip()
    if text[:5].lower() == "data:":
        return MediaSlot(index, key, path, text, is_url=False, is_image=is_image)
    scheme = urlsplit(text).scheme.lower() if "://" in text else ""
    if scheme in ("http", "https"):
        if not policy.allow_url_fetch:
            raise ApiError(
                400,
                f"{where}: media URLs are disabled on this server; send a base64 data URI",
                code="media_url_disabled",
                param=where,
            )
        return MediaSlot(index, key, path, text, is_url=True, is_image=is_image)
    raise ApiError(
        400,
        f"{where}: local paths and file:// or other non-http(s) URLs are not accepted; send a base64 "
        "data URI" + (" or an http(s) URL" if policy.allow_url_fetch else ""),
        code="media_source_forbidden",
        param=where,
    )


def decode_media_data_uri(slot: MediaSlot, policy: MediaPolicy) -> bytes:
    """The core's one data-URI decoder, its errors as this API's (400 malformed, 413 too large)."""
    try:
        return decode_data_uri(slot.source, policy.max_media_bytes)
    except DataUriTooLargeError:
        raise _too_large(slot, policy) from None
    except InputError as error:
        raise ApiError(
            400, f"{slot.param}: {error.reason}", code="invalid_media", param=slot.param
        ) from None


def check_image(data: bytes, slot: MediaSlot, policy: MediaPolicy) -> None:
    """Reads the image header only: refuses what is not an image and decompression bombs."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        # PIL refuses to open anything past twice its own pixel limit (~179 Mpx): a valid image
        # that is too large (413), not unreadable data (it was a 400 "not an image" before).
        raise ApiError(
            413,
            f"{slot.param}: the image has more pixels than the limit of {policy.max_image_pixels}",
            code="media_too_large",
            param=slot.param,
        ) from None
    except Exception:  # PIL raises many types for bad data; all mean the same to the client
        raise ApiError(
            400,
            f"{slot.param}: the data is not an image PIL can read",
            code="invalid_media",
            param=slot.param,
        ) from None
    if width * height > policy.max_image_pixels:
        raise ApiError(
            413,
            f"{slot.param}: the image is {width}x{height} pixels, more than the limit of {policy.max_image_pixels}",
            code="media_too_large",
            param=slot.param,
        )


def _too_large(slot: MediaSlot, policy: MediaPolicy) -> ApiError:
    return ApiError(
        413,
        f"{slot.param}: larger than the limit of {policy.max_media_bytes} bytes",
        code="media_too_large",
        param=slot.param,
    )


async def load_media(
    items: Sequence[Any],
    slots: Sequence[MediaSlot],
    policy: MediaPolicy,
    fetcher: SafeMediaFetcher | None,
) -> list[Any]:
    """Items with every media source replaced by its bytes (fetches run concurrently)."""
    if not slots:
        return list(items)

    async def load(slot: MediaSlot) -> bytes:
        if slot.is_url:
            if fetcher is None:  # find_media refuses URLs when fetching is off; this is a bug guard
                raise ApiError(
                    400,
                    f"{slot.param}: media URLs are disabled",
                    code="media_url_disabled",
                    param=slot.param,
                )
            try:
                data = await fetcher.fetch(slot.source)
            except FetchRefused as error:
                raise ApiError(
                    error.status,
                    f"{slot.param}: {error.message}",
                    code=error.code,
                    param=slot.param,
                ) from None
        else:
            data = await asyncio.to_thread(decode_media_data_uri, slot, policy)
        if slot.is_image:
            await asyncio.to_thread(check_image, data, slot, policy)
        return data

    tasks = [asyncio.ensure_future(load(slot)) for slot in slots]
    try:
        loaded = await asyncio.gather(*tasks)
    finally:
        for task in tasks:  # one refused source ends the request: stop the other fetches
            task.cancel()
    _check_item_totals(slots, loaded, policy)
    frames = await asyncio.to_thread(_undecided_frames, slots, loaded)
    for slot, data in zip(slots, loaded, strict=True):
        if frames.get(slot, False):
            await asyncio.to_thread(check_image, data, slot, policy)
    # Deep copies of the media values: the parsed request stays as the client sent it.
    resolved: list[Any] = [
        {key: _copy_lists(value) for key, value in item.items()} if isinstance(item, dict) else item
        for item in items
    ]
    for slot, data in zip(slots, loaded, strict=True):
        if not slot.path:
            resolved[slot.item][slot.key] = data
            continue
        container = resolved[slot.item][slot.key]
        for position in slot.path[:-1]:
            container = container[position]
        container[slot.path[-1]] = data
    return resolved


def _copy_lists(value: Any) -> Any:
    return [_copy_lists(one) for one in value] if isinstance(value, list) else value


def _undecided_frames(slots: Sequence[MediaSlot], loaded: Sequence[bytes]) -> dict[MediaSlot, bool]:
    """For each element of a `video` list: a frame (True) when the list's first element is an
    image by its content, as the model replica will read it; else a video file (False)."""
    from qwen3_embed.vl.items import looks_like_image

    first: dict[tuple[int, str], bool] = {}  # (item, key) -> the list holds frames
    for slot, data in zip(slots, loaded, strict=True):
        if slot.is_image is None and slot.path == (0,):
            first[(slot.item, slot.key)] = looks_like_image(data)
    return {
        slot: first.get((slot.item, slot.key), False) for slot in slots if slot.is_image is None
    }


def _check_item_totals(
    slots: Sequence[MediaSlot], loaded: Sequence[bytes], policy: MediaPolicy
) -> None:
    totals: dict[int, int] = {}
    for slot, data in zip(slots, loaded, strict=True):
        totals[slot.item] = totals.get(slot.item, 0) + len(data)
    for item, total in sorted(totals.items()):
        if total > policy.max_item_media_bytes:
            raise ApiError(
                413,
                f"input[{item}]: its media add up to {total} bytes, more than the limit of "
                f"{policy.max_item_media_bytes} per item",
                code="media_too_large",
                param=f"input[{item}]",
            )
