"""Request inputs and media (deployments/inputs.py): splitting `input` under the request
limits, finding media in the items, loading and checking each medium."""

from __future__ import annotations

import asyncio
import base64

import pytest
from serve_support import (
    image_bytes,
    png_bytes,
)

from deployments.config import MediaPolicy, RequestLimits
from deployments.errors import ApiError
from deployments.inputs import find_media, load_media, split_input


def run(coro):
    return asyncio.run(coro)


# -------------------------------------------------------------------------- inputs / media
LIMITS = RequestLimits(max_inputs_per_request=3, max_chars_per_request=20)


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        ([], 400, "empty_input"),
        (["a", "b", "c", "d"], 400, "too_many_inputs"),
        (["x" * 21], 413, "request_too_large"),
        ([1, 2, 3], 400, "token_ids_not_supported"),
        ([[1, 2]], 400, "token_ids_not_supported"),
        ([None], 400, "invalid_input"),
        ([True], 400, "invalid_input"),
        ([{"text": "a", "audio": "x"}], 400, "invalid_input"),
        ([{"text": 5}], 400, "invalid_input"),
    ],
)
def test_split_input_refusals(raw, status, code):
    with pytest.raises(ApiError) as info:
        split_input(raw, None, LIMITS)
    assert (info.value.status, info.value.code) == (status, code)


def test_split_input_counts_instruction_characters():
    assert split_input("hello", None, LIMITS) == ["hello"]
    with pytest.raises(ApiError, match="characters"):
        split_input(["hello"], "x" * 16, LIMITS)


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("/etc/passwd", "media_source_forbidden"),
        ("file:///etc/passwd", "media_source_forbidden"),
        ("FILE:///etc/passwd", "media_source_forbidden"),
        ("relative/image.png", "media_source_forbidden"),
        ("s3://bucket/key.png", "media_source_forbidden"),
        ("http://example.com/a.png", "media_url_disabled"),
        (5, "invalid_media"),
    ],
)
def test_find_media_refuses_paths_and_disabled_urls(source, code):
    with pytest.raises(ApiError) as info:
        find_media([{"image": source}], "vl", "m", MediaPolicy())
    assert (info.value.status, info.value.code, info.value.param) == (400, code, "input[0].image")


def test_find_media_refuses_media_for_text_models_and_counts_frames():
    with pytest.raises(ApiError) as info:
        find_media(["a", {"text": "b", "image": _data_uri(b"x")}], "text", "m", MediaPolicy())
    assert (info.value.code, info.value.param) == ("unsupported_input", "input[1].image")
    frames = [_data_uri(png_bytes())] * 3
    slots = find_media([{"video": frames, "image": frames[0]}], "vl", "m", MediaPolicy())
    assert [slot.param for slot in slots] == [
        "input[0].image", "input[0].video[0]", "input[0].video[1]", "input[0].video[2]",
    ]  # fmt: skip
    with pytest.raises(ApiError) as info:
        find_media([{"video": frames}], "vl", "m", MediaPolicy(max_media_per_request=2))
    assert (info.value.status, info.value.code) == (413, "too_many_media")


def test_find_media_reads_lists_like_the_core():
    """image lists; a video list whose first element is an image (by content, once loaded, as the
    model replica reads it) is one video's frames, any other list is several videos (files or
    nested frame lists), each medium named by its place in the item."""
    frame = _data_uri(png_bytes())
    clip_bytes = b"\x00\x00\x00\x18ftypmp42"
    clip = _data_uri(clip_bytes, "video/mp4")
    items = [
        {"image": [frame, frame], "text": ["p1", "p2"]},
        {"video": [frame, frame]},
        {"video": [clip, [frame, frame]], "fps": 2, "max_frames": 8},
    ]
    slots = find_media(items, "vl", "m", MediaPolicy())
    assert [(slot.param, slot.is_image) for slot in slots] == [
        ("input[0].image[0]", True), ("input[0].image[1]", True),
        ("input[1].video[0]", None), ("input[1].video[1]", None),  # decided once loaded
        ("input[2].video[0]", None), ("input[2].video[1][0]", True), ("input[2].video[1][1]", True),
    ]  # fmt: skip
    with pytest.raises(ApiError) as info:
        find_media([{"video": [clip, ["/etc/passwd"]]}], "vl", "m", MediaPolicy())
    assert (info.value.code, info.value.param) == ("media_source_forbidden", "input[0].video[1][0]")
    loaded = run(load_media(items, slots, MediaPolicy(), None))
    assert loaded[1]["video"] == [png_bytes(), png_bytes()]
    assert loaded[2]["video"] == [clip_bytes, [png_bytes(), png_bytes()]]
    assert items[2]["video"][1][0] == frame  # the request itself is left as sent
    assert split_input(items, None, LIMITS) == items  # text lists count their characters
    with pytest.raises(ApiError) as info:
        split_input([{"text": ["ok", 3]}], None, LIMITS)
    assert (info.value.code, info.value.param) == ("invalid_input", "input[0].text[1]")


def test_load_media_checks_each_medium_and_the_items_total():
    image = png_bytes(8, 8)
    policy = MediaPolicy(max_media_bytes=len(image), max_item_media_bytes=2 * len(image))
    fine = [{"image": [_data_uri(image)] * 2}, {"image": [_data_uri(image)] * 2}]
    assert len(run(load_media(fine, find_media(fine, "vl", "m", policy), policy, None))) == 2
    heavy = [{"image": [_data_uri(image)] * 2, "video": [_data_uri(image)]}]
    with pytest.raises(ApiError) as info:
        run(load_media(heavy, find_media(heavy, "vl", "m", policy), policy, None))
    assert (info.value.status, info.value.code, info.value.param) == (
        413, "media_too_large", "input[0]",
    )  # fmt: skip
    # Frames are told by content, whatever the MIME type: a frame list labelled as videos is
    # still checked frame by frame (here: one over the pixel limit).
    small = MediaPolicy(max_image_pixels=100)
    labelled = [
        {"video": [_data_uri(image, "video/mp4"), _data_uri(png_bytes(20, 20), "video/mp4")]}
    ]
    with pytest.raises(ApiError) as info:
        run(load_media(labelled, find_media(labelled, "vl", "m", small), small, None))
    assert (info.value.status, info.value.param) == (413, "input[0].video[1]")


def test_load_media_decodes_data_uris_to_bytes_and_checks_images():
    image = png_bytes(8, 8)
    policy = MediaPolicy(max_media_bytes=10_000, max_image_pixels=10_000)
    items = [{"text": "t", "image": _data_uri(image)}, "plain", {"video": [_data_uri(image)] * 2}]
    slots = find_media(items, "vl", "m", policy)
    loaded = run(load_media(items, slots, policy, None))
    assert loaded[0] == {"text": "t", "image": image}
    assert loaded[1] == "plain" and loaded[2] == {"video": [image, image]}
    assert items[0]["image"].startswith("data:")  # the request itself is left as sent

    def refused(source: str, policy: MediaPolicy = policy) -> ApiError:
        bad = [{"image": source}]
        with pytest.raises(ApiError) as info:
            run(load_media(bad, find_media(bad, "vl", "m", policy), policy, None))
        return info.value

    assert refused("data:image/png;base64,@@@").code == "invalid_media"
    assert refused("data:image/png,rawtext").code == "invalid_media"
    assert refused(_data_uri(b"not an image")).code == "invalid_media"
    big = refused(_data_uri(png_bytes(200, 100)))  # 20,000 pixels > 10,000
    assert (big.status, big.code) == (413, "media_too_large")
    heavy = refused(_data_uri(b"x" * 20_000))
    assert (heavy.status, heavy.code) == (413, "media_too_large")


def test_declared_decompression_bomb_is_413_not_400():
    """PIL refuses to open images past ~179 Mpx (DecompressionBombError); that was answered as
    400 "not an image PIL can read". A 400 Mpx PNG is 50 KB on the wire."""
    from deployments.config import MediaPolicy
    from deployments.errors import ApiError
    from deployments.inputs import MediaSlot, check_image

    slot = MediaSlot(0, "image", (), "data:", is_url=False, is_image=True)
    with pytest.raises(ApiError) as info:
        check_image(image_bytes(20_000, 20_000, "1"), slot, MediaPolicy())
    assert (info.value.status, info.value.code) == (413, "media_too_large")
