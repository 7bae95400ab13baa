"""Media sources -> bytes or decoded images, with limits.

A source is one of: a `PIL.Image.Image`; a numpy array (H, W[, C]) of uint8; raw encoded bytes; a
base64 `data:` URI; an http(s) URL; any other fsspec URL (`s3://`, `gs://`, `file://`, ...); a
local path (str or os.PathLike). `MediaOptions` decides which of those are allowed (a server
forbids local paths, maybe URLs) and how large a payload or an image may be. Every failure is an
`InputError` with a reason, so one bad item never fails a batch.
"""

from __future__ import annotations

import io
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..data_uri import decode_data_uri
from ..errors import InputError

# PIL's own default Image.MAX_IMAGE_PIXELS (~ 9459 x 9459), fixed here so a caller that changes
# PIL's global does not silently change ours.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_TIMEOUT_S = 30.0
# Per item: images + videos (a frame list counts as one video), and decoded pixels over all of
# them (256 Mpx: 64 pages of 2000 x 2000, ~0.8 GB of RGB at most while the item is loaded).
DEFAULT_MAX_MEDIA_PER_ITEM = 64
DEFAULT_MAX_ITEM_PIXELS = 256 * 1024 * 1024
# Per item: video frames decoded (sampled ones and those decoded to reach them) and seconds
# spent reading its videos. Frames are sampled by seeking to the keyframe before each, so a
# video costs about (sampled frames) x (its keyframe interval) decodes: 64 x 256 here.
DEFAULT_MAX_DECODED_FRAMES = 16_384
DEFAULT_MAX_DECODE_S = 60.0

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


@dataclass(frozen=True)
class MediaOptions:
    """Which sources are allowed and how large media may be.

    The defaults suit direct, trusted use of the library: paths and URLs allowed. A public server
    should build `MediaOptions(allow_local_paths=False, allow_urls=...)`.
    """

    allow_local_paths: bool = True  # plain paths, `file://` URLs
    allow_urls: bool = True  # http(s) and remote fsspec URLs (s3://, gs://, ...)
    max_bytes: int = DEFAULT_MAX_BYTES  # per encoded image / video payload
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image or video frame, checked before decoding
    timeout_s: float = DEFAULT_TIMEOUT_S  # per http(s) fetch
    max_media_per_item: int = DEFAULT_MAX_MEDIA_PER_ITEM  # images + videos in one item
    max_item_pixels: int = DEFAULT_MAX_ITEM_PIXELS  # decoded pixels over one item's media
    max_decoded_frames: int = DEFAULT_MAX_DECODED_FRAMES  # video frames decoded for one item
    max_decode_s: float = DEFAULT_MAX_DECODE_S  # seconds reading one item's videos

    def __post_init__(self) -> None:
        for name in (
            "max_bytes",
            "max_pixels",
            "max_media_per_item",
            "max_item_pixels",
            "max_decoded_frames",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MediaOptions.{name} must be an integer >= 1, got {value!r}")
        for name in ("timeout_s", "max_decode_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MediaOptions.{name} must be > 0, got {getattr(self, name)!r}")


def describe(source: Any) -> str:
    """A short, log-safe description of a source (never a whole data URI or byte string)."""
    if isinstance(source, str):
        if source.startswith("data:"):
            return repr(source[:40] + "...") if len(source) > 40 else repr(source)
        # Keep the end of long paths and URLs: the file name is what a reader needs.
        return repr(source if len(source) <= 160 else "..." + source[-157:])
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def _check_size(size: int, options: MediaOptions, what: str) -> None:
    if size > options.max_bytes:
        raise InputError(f"{what} is larger than the limit of {options.max_bytes} bytes")


def _read_limited(handle: Any, options: MediaOptions, what: str) -> bytes:
    data = handle.read(options.max_bytes + 1)
    _check_size(len(data), options, what)
    return data


def fetch_http_bytes(url: str, options: MediaOptions) -> bytes:
    """GET an http(s) URL within `options`' size and time limits. Network errors propagate as
    they are, so callers that retry (the batch job) can tell transient ones from final ones; an
    over-large body is an InputError."""
    with urllib.request.urlopen(url, timeout=options.timeout_s) as response:  # noqa: S310 (scheme checked by callers)
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit():
            _check_size(int(declared), options, f"{describe(url)}")
        return _read_limited(response, options, describe(url))


def _fetch_http(url: str, options: MediaOptions) -> bytes:
    try:
        return fetch_http_bytes(url, options)
    except InputError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise InputError(f"could not fetch {describe(url)}: {error}") from None


def _fetch_fsspec(url: str, options: MediaOptions) -> bytes:
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    try:
        if not options.allow_local_paths:
            # Chained URLs ("zip://a.png::file:///b.zip") and local filesystems under another name
            # ("local://") would read local files behind the policy's back.
            filesystem = None if "::" in url else fsspec.core.url_to_fs(url)[0]
            if filesystem is None or isinstance(filesystem, LocalFileSystem):
                raise InputError(
                    f"{describe(url)} may read local files, which are not allowed here"
                )
        with fsspec.open(url, "rb") as handle:
            return _read_limited(handle, options, describe(url))
    except InputError:
        raise
    except (OSError, ValueError, ImportError) as error:
        # ImportError: the scheme's filesystem package (s3fs, gcsfs, ...) is not installed.
        raise InputError(f"could not read {describe(url)}: {error}") from None


def local_path(source: str | os.PathLike, options: MediaOptions) -> str:
    """A readable local file within the size limit, or an InputError."""
    if not options.allow_local_paths:
        raise InputError(
            "local file paths are not allowed here; send the media as bytes or a data URI"
        )
    path = os.fspath(source)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if path.startswith("file://"):
        path = path[len("file://") :]
    if not os.path.isfile(path):
        raise InputError(f"no such file: {describe(path)}")
    _check_size(os.path.getsize(path), options, describe(path))
    return path


def is_remote_url(source: str) -> bool:
    """A URL with a scheme other than file:// (which is a local path)."""
    return bool(_URL_SCHEME.match(source)) and not source.startswith("file://")


def read_bytes(source: Any, options: MediaOptions) -> bytes:
    """Encoded media from bytes, a data URI, a URL or a local path."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_size(len(data), options, "the media bytes")
        return data
    if isinstance(source, str):
        if source[:5].lower() == "data:":
            return decode_data_uri(source, options.max_bytes)
        if is_remote_url(source):
            if not options.allow_urls:
                raise InputError("URLs are not allowed here; send the media as bytes or a data URI")
            if source[:8].lower().startswith(("http://", "https://")):
                return _fetch_http(source, options)
            return _fetch_fsspec(source, options)
    if isinstance(source, (str, os.PathLike)):
        path = local_path(source, options)
        try:
            with open(path, "rb") as handle:
                return _read_limited(handle, options, describe(path))
        except OSError as error:
            raise InputError(f"could not read {describe(path)}: {error}") from None
    raise InputError(
        f"unsupported media source of type {type(source).__name__}; valid sources are: bytes, a "
        "data URI, an http(s) or fsspec URL, a local path"
    )


def check_pixels(width: int, height: int, options: MediaOptions, what: str = "image") -> None:
    if width * height > options.max_pixels:
        raise InputError(
            f"{what} is {width}x{height} = {width * height} pixels, more than the limit of "
            f"{options.max_pixels} (refused as a possible decompression bomb)"
        )


def decode_image(data: bytes, options: MediaOptions) -> Image.Image:
    """Encoded bytes -> a fully decoded PIL image (mode kept: RGB conversion is the official step)."""
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        check_pixels(image.width, image.height, options)
        image.load()
    except InputError:
        raise
    except Image.DecompressionBombError as error:
        raise InputError(f"image refused as a decompression bomb ({error})") from None
    except (OSError, ValueError, SyntaxError) as error:
        # UnidentifiedImageError is an OSError; truncated or corrupt data raises OSError/SyntaxError.
        raise InputError(f"could not decode the image ({error})") from None
    return image


def load_image(source: Any, options: MediaOptions) -> Image.Image:
    """Any supported image source -> a decoded PIL image within the pixel limit."""
    if isinstance(source, Image.Image):
        check_pixels(source.width, source.height, options)
        return source
    if isinstance(source, np.ndarray):
        return _image_from_array(source, options)
    return decode_image(read_bytes(source, options), options)


def _image_from_array(array: np.ndarray, options: MediaOptions) -> Image.Image:
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[2] not in (1, 3, 4))
    ):
        raise InputError(
            f"an image array must be uint8 of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); "
            f"got {array.dtype} {array.shape}"
        )
    check_pixels(array.shape[1], array.shape[0], options)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array))
