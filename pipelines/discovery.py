"""Find the input files of a job and tell their format, on the driver (one listing, no rows read).

Ids derived from file and row (`relative/path.jsonl:row`) use each file's path relative to the
inputs' root: the folder given, the fixed part of a glob, or the folder of a single file (and
their common folder when several inputs are given). Rerunning with the same INPUT therefore
gives the same ids, wherever the files are mounted.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from .storage import Location, glob_to_regex, is_hidden, list_files, resolve, split_glob

EXTENSIONS = {
    "parquet": (".parquet", ".pq"),
    "jsonl": (".jsonl", ".ndjson", ".json"),
    "csv": (".csv", ".tsv"),
    "txt": (".txt",),
    "images": (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"),
    "videos": (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"),
}
# Whole-file compression that pyarrow's input streams undo on the fly (not for parquet/images).
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4", ".br")


@dataclass(frozen=True)
class InputFile:
    path: str  # filesystem path (no scheme)
    relpath: str  # relative to the inputs' root; the stem of derived ids
    format: str  # parquet | jsonl | csv | txt | images | videos
    size: int
    mtime_ns: int | None = None  # None where the filesystem does not say (some HTTP servers)


@dataclass(frozen=True)
class InputSet:
    fs: pafs.FileSystem
    prefix: str  # URL prefix of the inputs ("" when local), to rebuild URLs for image references
    root: str
    files: tuple[InputFile, ...]
    listed_folders: tuple[str, ...] = ()  # folders listed recursively (folder inputs, glob bases)

    def formats(self) -> list[str]:
        return sorted({item.format for item in self.files})

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.files)


def detect_format(path: str) -> str | None:
    name = path.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            compressed = True
            break
    else:
        compressed = False
    for fmt, extensions in EXTENSIONS.items():
        if name.endswith(extensions):
            return None if compressed and fmt in ("parquet", "images", "videos") else fmt
    return None


def discover(
    inputs: tuple[str, ...], fmt: str = "auto", storage_options: Mapping[str, Any] | None = None
) -> InputSet:
    """Every data file named by `inputs`, sorted by relative path, each listed once."""
    found: list[tuple[Location, str, list[str]]] = []  # (location, root, file paths)
    listed: list[str] = []  # folders listed recursively: folder inputs and glob bases
    for spec in inputs:
        location = resolve(spec, storage_options)
        base, pattern = split_glob(location.path)
        if pattern is not None:
            regex = glob_to_regex(pattern)
            base_location = Location(location.fs, base, location.prefix)
            paths = [
                info.path
                for info in list_files(base_location)
                if regex.match(_relative(info.path, base))
                and not is_hidden(_relative(info.path, base))
            ]
            if not paths:
                raise FileNotFoundError(f"input {spec!r} matches no files")
            found.append((location, base, paths))
            listed.append(base)
            continue
        info = location.fs.get_file_info(location.path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"input {spec!r} does not exist")
        if info.type == pafs.FileType.Directory:
            paths = [
                item.path
                for item in list_files(location)
                if not is_hidden(_relative(item.path, location.path))
            ]
            if not paths:
                raise FileNotFoundError(f"input folder {spec!r} holds no data files")
            found.append((location, location.path, paths))
            listed.append(location.path)
        else:
            found.append((location, posixpath.dirname(location.path), [location.path]))

    prefixes = {location.prefix for location, _, _ in found}
    if len(prefixes) > 1:
        raise ValueError(
            f"all inputs must be on one filesystem; got {sorted(p or 'local' for p in prefixes)}"
        )
    roots = [root for _, root, _ in found]
    root = roots[0] if len(roots) == 1 else _common_root(roots)
    first = found[0][0]
    files: dict[str, InputFile] = {}
    sizes, mtimes = {}, {}
    unknown: list[str] = []
    for location, _, paths in found:
        for info in location.fs.get_file_info(paths):
            sizes[info.path] = info.size or 0
            mtimes[info.path] = info.mtime_ns
    for path in sorted(sizes):
        file_format = fmt if fmt != "auto" else detect_format(path)
        if file_format is None:
            unknown.append(path)
            continue
        files[path] = InputFile(
            path=path,
            relpath=_relative(path, root),
            format=file_format,
            size=sizes[path],
            mtime_ns=mtimes[path],
        )
    if unknown:
        shown = ", ".join(first.uri(path) for path in unknown[:5]) + (
            " ..." if len(unknown) > 5 else ""
        )
        valid = ", ".join(ext for extensions in EXTENSIONS.values() for ext in extensions)
        raise ValueError(
            f"cannot tell the format of {len(unknown)} input file(s): {shown}. Known extensions: {valid} "
            f"(text formats may end in {', '.join(COMPRESSION_SUFFIXES)}); pass --format, or a glob that "
            "selects only data files"
        )
    ordered = tuple(sorted(files.values(), key=lambda item: item.relpath))
    return InputSet(
        fs=first.fs, prefix=first.prefix, root=root, files=ordered, listed_folders=tuple(listed)
    )


def _relative(path: str, root: str) -> str:
    if not root or root == "/":
        return path.lstrip("/")
    return posixpath.relpath(path, root)


def _common_root(roots: list[str]) -> str:
    absolute = roots[0].startswith("/")
    common = posixpath.commonpath([root.lstrip("/") for root in roots])
    return ("/" + common) if absolute else common
