"""The VL items (qwen3_embed/vl/items.py): a bad item is an input error naming its index, the
others are embedded; the official rule for which lists are one video's frames.
The test media (`media`) are a session fixture of tests/core/conftest.py."""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torchvision")
pytest.importorskip("qwen_vl_utils")
av = pytest.importorskip("av")
from qwen3_embed import (  # noqa: E402
    InputError,
)


# --------------------------------------------------------------------------- test media
def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels in a few dozen bytes (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- errors
ERROR_CASES = {
    "empty item": (lambda m: {}, r"the item is empty"),
    "only None values": (lambda m: {"text": None, "image": None}, r"the item is empty"),
    "unknown key": (
        lambda m: {"text": "x", "img": "a.png"},
        r"unknown key\(s\) \['img'\]; valid keys are: text, image, video, instruction, fps, max_frames",
    ),
    "item of wrong type": (lambda m: 42, r"an item must be a string or a dict"),
    "text of wrong type": (lambda m: {"text": 3}, r"text must be a string"),
    "empty text": (lambda m: {"text": "  ", "image": m.photo}, r"text is empty"),
    "instruction of wrong type": (
        lambda m: {"text": "x", "instruction": 1},
        r"instruction must be a string",
    ),
    "image of wrong type": (
        lambda m: {"image": 3.5},
        r"image: unsupported media source of type float",
    ),
    "corrupt image bytes": (
        lambda m: {"image": b"not an image at all"},
        r"image: could not decode the image",
    ),
    "truncated image": (
        lambda m: {"image": m.photo_bytes[:200]},
        r"image: could not decode the image",
    ),
    "bad base64": (
        lambda m: {"image": "data:image/png;base64,@@not base64@@"},
        r"image: the data URI payload is not valid base64",
    ),
    "data URI without base64": (
        lambda m: {"image": "data:image/png,abc"},
        r"image: a data URI must look like",
    ),
    "decompression bomb": (
        lambda m: {"image": png_header_only(100_000, 100_000)},
        r"image: image refused as a decompression bomb",
    ),
    "over the pixel limit": (
        lambda m: {"image": png_header_only(10_000, 10_000)},
        r"image: image is 10000x10000 = 100000000 pixels, more than the limit of 89478485",
    ),
    "missing file": (
        lambda m: {"image": "/no/such/photo.png"},
        r"image: no such file: '/no/such/photo.png'",
    ),
    "extreme aspect ratio": (
        lambda m: {"image": Image.new("RGB", (1000, 4))},
        r"image: cannot be used \(absolute aspect ratio",
    ),
    "bad array": (
        lambda m: {"image": np.zeros((4, 4), dtype=np.float32)},
        r"image: an image array must be uint8",
    ),
    "reserved vision token in text": (
        lambda m: {"text": "look <|image_pad|> here", "image": m.photo},
        r"text and instruction must not contain the reserved token <\|image_pad\|>",
    ),
    "reserved vision token in instruction": (
        lambda m: {"text": "x", "instruction": "<|video_pad|>"},
        r"text and instruction must not contain the reserved token <\|video_pad\|>",
    ),
    "empty video list": (lambda m: {"video": []}, r"video is an empty list"),
    "empty frame list among videos": (
        lambda m: {"video": [m.clip_path, []]},
        r"video\[1\] is an empty frame list",
    ),
    "empty image list": (lambda m: {"image": [], "text": "x"}, r"image is an empty list"),
    "empty text list": (lambda m: {"text": [], "image": m.photo}, r"text is an empty list"),
    "lone surrogate in a text string": (lambda m: "x \ud800", r"text is not valid Unicode"),
    "lone surrogate in a text list": (
        lambda m: {"text": ["ok", "\udc00"], "image": m.photo},
        r"text\[1\] is not valid Unicode text: it holds a lone surrogate U\+DC00 at character 0",
    ),
    "lone surrogate in the item's instruction": (
        lambda m: {"text": "x", "instruction": "\ud83d find"},
        r"instruction is not valid Unicode",
    ),
    "empty text in a list": (lambda m: {"text": ["ok", " "]}, r"text\[1\] is empty"),
    "text list of wrong type": (lambda m: {"text": ["ok", 3]}, r"text\[1\] must be a string"),
    "bad second image names it": (
        lambda m: {"image": [m.photo, b"junk"]},
        r"image\[1\]: could not decode the image",
    ),
    "bad second video names it": (
        lambda m: {"video": [m.clip_path, "/no/such/clip.mp4"]},
        r"video\[1\]: no such file",
    ),
    "fps of 0 (the official code would silently use 1)": (
        lambda m: {"video": m.clip_path, "fps": 0},
        r"fps must be > 0",
    ),
    "fps of wrong type": (lambda m: {"video": m.clip_path, "fps": "2"}, r"fps must be a finite"),
    "max_frames of 1": (
        lambda m: {"video": m.clip_path, "max_frames": 1},
        r"max_frames must be an integer >= 2",
    ),
    "max_frames on a frame list only": (
        lambda m: {"video": m.frames, "max_frames": 8},
        r"fps and max_frames apply to video files only",
    ),
    "fps without a video": (lambda m: {"text": "x", "fps": 2}, r"fps and max_frames apply"),
    "reserved token with two images": (
        lambda m: {"text": "<|image_pad|>", "image": [m.photo, m.photo]},
        r"text and instruction must not contain the reserved token <\|image_pad\|>",
    ),
    "corrupt frame": (
        lambda m: {"video": [m.photo, b"junk"]},
        r"video: video frame 1: could not decode the image",
    ),
    "frames of different sizes": (
        lambda m: {"video": [m.photo, m.rgba]},
        r"video: video frames must all have the same size",
    ),
    "corrupt video": (
        lambda m: {"video": b"\x00\x00\x00\x18ftypmp42 not really a video"},
        r"video: could not decode the video",
    ),
    "image as video": (lambda m: {"video": m.photo_bytes}, r"video: "),
    "missing video": (lambda m: {"video": "/no/such/clip.mp4"}, r"video: no such file"),
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_item_is_an_input_error_naming_its_index(tiny_vl_embedder, media, case):
    build, reason = ERROR_CASES[case]
    with pytest.raises(InputError, match=r"^input\[1\]: " + reason):
        tiny_vl_embedder.embed(["a good item", build(media), "another good one"])


def test_video_list_rule_follows_the_official_is_video_input(tiny_vl_embedder, media):
    """A list starting with an image is one video (frames); any other list is several videos."""
    from qwen3_embed.vl.items import split_videos

    frame_paths = [str(media.dir / f"f{i}.png") for i in range(3)]
    for index, path in enumerate(frame_paths):
        media.frames[index].save(path)
    assert split_videos(media.clip_path) == [media.clip_path]
    assert split_videos(frame_paths) == [frame_paths]  # image suffix: frames
    assert split_videos(media.frames) == [media.frames]
    assert split_videos([media.clip_path, media.clip_path]) == [media.clip_path] * 2
    assert split_videos([frame_paths, media.clip_path]) == [frame_paths, media.clip_path]
    assert len(split_videos([media.photo_bytes, media.photo_bytes])) == 1  # PNG bytes: frames
    clip = Path(media.clip_path).read_bytes()
    assert split_videos([clip, clip]) == [clip, clip]  # mp4 bytes: two videos
    data_uri = "data:image/png;base64," + base64.b64encode(media.photo_bytes).decode()
    assert len(split_videos([data_uri, data_uri])) == 1
    assert split_videos(["https://x.test/a.JPG?size=2", "https://x.test/b.jpg"]) == [
        ["https://x.test/a.JPG?size=2", "https://x.test/b.jpg"]
    ]
