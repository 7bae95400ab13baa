"""Filesystems: local paths and URLs (s3://, gs://, any fsspec scheme) as pyarrow filesystems.

Ray Data reads and writes through pyarrow filesystems natively, and they pickle into Ray tasks
with their options (an S3 endpoint override travels with the object). Schemes pyarrow does not
know are wrapped from fsspec.
"""

from __future__ import annotations

import contextlib
import functools
import posixpath
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from .layout import TMP_DIR

# Object stores make a written object visible only when the upload completes, so a reader never
# sees half a file; everything else gets write-to-temporary-then-rename.
ATOMIC_PUT_FILESYSTEMS = ("s3", "gcs")
GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Location:
    """A path on a filesystem, remembered with the URL prefix it was given in."""

    fs: pafs.FileSystem
    path: str  # filesystem path (no scheme): "bucket/key" on S3, "/abs/path" locally
    prefix: str  # "" for local paths, "s3://" etc. for URLs

    def uri(self, path: str | None = None) -> str:
        return f"{self.prefix}{self.path if path is None else path}"

    def child(self, *parts: str) -> Location:
        return Location(self.fs, posixpath.join(self.path, *parts), self.prefix)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)


def resolve(url: str, storage_options: Mapping[str, Any] | None = None) -> Location:
    """The filesystem and path for a local path or URL."""
    options = dict(storage_options or {})
    scheme, sep, rest = url.partition("://")
    if not sep or scheme == "file":
        import os

        local = os.path.abspath(os.path.expanduser(rest if sep else url))
        return Location(pafs.LocalFileSystem(), local.replace(os.sep, "/"), "")
    scheme = scheme.lower()
    if scheme in ("s3", "s3a", "gs", "gcs"):
        return Location(_object_store(scheme, options), rest.rstrip("/"), f"{scheme}://")
    if not options:
        try:
            fs, path = pafs.FileSystem.from_uri(url)
            return Location(fs, path.rstrip("/"), f"{scheme}://")
        except (ValueError, OSError):  # pyarrow's ArrowInvalid is a ValueError
            pass  # not a pyarrow scheme: try fsspec below
    import fsspec

    fsspec_fs, path = fsspec.core.url_to_fs(url, **options)
    return Location(
        pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_fs)), path.rstrip("/"), f"{scheme}://"
    )


def _object_store(scheme: str, options: dict[str, Any]) -> pafs.FileSystem:
    try:
        return _cached_object_store(scheme, tuple(sorted(options.items())))
    except TypeError:  # an unhashable option value (a nested mapping): build one uncached
        return _new_object_store(scheme, options)


@functools.lru_cache(maxsize=16)
def _cached_object_store(scheme: str, options: tuple[tuple[str, Any], ...]) -> pafs.FileSystem:
    # One client per worker process and settings: building an S3 client costs milliseconds and
    # the prepare stage may fetch an image per row.
    return _new_object_store(scheme, dict(options))


def _new_object_store(scheme: str, options: dict[str, Any]) -> pafs.FileSystem:
    if scheme in ("s3", "s3a"):
        return pafs.S3FileSystem(**options)
    return pafs.GcsFileSystem(**options)


def split_glob(path: str) -> tuple[str, str | None]:
    """('static/prefix', 'pattern/below') for a glob path, ('path', None) otherwise."""
    parts = path.split("/")
    for index, part in enumerate(parts):
        if GLOB_CHARS.search(part):
            base = "/".join(parts[:index]) or ("/" if path.startswith("/") else "")
            return base, "/".join(parts[index:])
    return path, None


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Shell-style glob over '/'-separated relative paths: `*` and `?` stay within a folder,
    `**` crosses folders (`a/**/b.txt` also matches `a/b.txt`)."""
    out, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
            continue
        if pattern.startswith("**", index):
            out.append(".*")
            index += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.find("]", index + 1)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = pattern[index + 1 : end].replace("\\", "\\\\")
                out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
                index = end
        else:
            out.append(re.escape(char))
        index += 1
    return re.compile("".join(out) + r"\Z")


def list_files(location: Location, recursive: bool = True) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(location.path, recursive=recursive, allow_not_found=True)
    return [info for info in location.fs.get_file_info(selector) if info.type == pafs.FileType.File]


def is_hidden(relative_path: str) -> bool:
    """Names starting with '_' or '.' (at any depth) are metadata, not data: Spark's _SUCCESS,
    .crc files, our own _errors/ and _tmp/."""
    return any(part.startswith(("_", ".")) for part in relative_path.split("/"))


def write_bytes_atomically(location: Location, data: bytes) -> None:
    """Write a whole file so that no reader ever sees it half-written."""
    write_atomically(location, lambda stream: stream.write(data))


def write_atomically(location: Location, write) -> None:
    """`write(stream)` fills the file; it appears at `location` complete or not at all."""
    fs = location.fs
    parent = posixpath.dirname(location.path)
    if fs.type_name in ATOMIC_PUT_FILESYSTEMS:
        with fs.open_output_stream(location.path) as stream:
            write(stream)
        return
    temporary = posixpath.join(
        parent, TMP_DIR, f"{posixpath.basename(location.path)}.{uuid.uuid4().hex}.inprogress"
    )
    fs.create_dir(posixpath.dirname(temporary), recursive=True)
    try:
        with fs.open_output_stream(temporary) as stream:
            write(stream)
        fs.move(temporary, location.path)  # rename: atomic on POSIX filesystems
    except BaseException:
        with contextlib.suppress(OSError):  # the write failed before the file existed
            fs.delete_file(temporary)
        raise


def read_bytes(location: Location) -> bytes:
    with location.fs.open_input_stream(location.path) as stream:
        return stream.read()
