"""Turn one input file into Arrow blocks of rows with an id, a status and the item's payload.

Every row of every file yields exactly one output row, good or bad: a line that is not JSON, a
CSV record with the wrong number of fields, a text value of the wrong type, an empty id, an image
file that cannot be read — each becomes an `error` row with its reason instead of being dropped
or failing the file. Whether the text is empty, the image decodes, or the input is too long is
the core's call (`Preparer.prepare_each`), made in the next stage.

A file that cannot be read at all, or past some row (a truncated or corrupt parquet file, a
broken compressed stream, a file that vanished), is read again up to `READ_ATTEMPTS` times (a
transient I/O error looks the same), then reported as one `unreadable_file` error row whose id is
the file's relative path (its own rows' ids are unknown); the rows read before the failure keep
their own. A 0-byte file is reported as one `empty_file` row with the same id. Either row counts
as one input row, so `rows_in == rows_embedded + rows_failed` still holds.

A file whose *layout* is wrong (a configured column missing, a JSON array instead of JSON lines,
a CSV that is not UTF-8) fails the job with a message naming the file: that is a configuration
mistake, not a bad row.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import posixpath
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .discovery import COMPRESSION_SUFFIXES, InputFile
from .rows import (
    CODE_EMPTY_FILE,
    CODE_INVALID_INPUT,
    CODE_INVALID_ROW,
    CODE_READ_ERROR,
    CODE_UNREADABLE_FILE,
    KEEP_PREFIX,
    READ_SCHEMA,
    STATUS_ERROR,
    STATUS_OK,
)

logger = logging.getLogger(__name__)

# What a truncated or corrupt file raises while it is decoded: ArrowInvalid (a parquet footer),
# OSError (a parquet page, a compressed stream, a file gone since it was listed). A transient
# I/O error raises the same, so a file is read again (skipping the rows already handed on)
# before it is reported.
FILE_ERRORS = (pa.ArrowInvalid, OSError)
READ_ATTEMPTS = 3

MAX_IMAGES_PER_ROW = 1024  # far beyond the core's media limit per item: a sanity bound only
# A VL row's own video sampling (the core's per-item `fps` / `max_frames`), read from these
# columns when the input has them.
FPS_COLUMN, MAX_FRAMES_COLUMN = "fps", "max_frames"


@dataclass(frozen=True)
class ReadSpec:
    """What to take from each row."""

    id_column: str | None
    text_column: str
    image_column: str | None  # None for text models: images are never read
    block_rows: int = 1024
    video_column: str | None = None  # None for text models: videos are never read
    # Carried columns (`keep_columns`): name and Arrow type (see `carried.kept_fields`); their
    # values travel on each row under `rows.KEEP_PREFIX` + name.
    keep: tuple[tuple[str, pa.DataType], ...] = ()

    @property
    def media_columns(self) -> tuple[str, ...]:
        """The VL columns read besides id and text: image, video, fps, max_frames."""
        names = (self.image_column,)
        if self.video_column is not None:
            names += (self.video_column, FPS_COLUMN, MAX_FRAMES_COLUMN)
        return tuple(name for name in names if name)


MAX_BLOCK_BYTES = 64 * 1024**2  # image bytes make rows large: cut blocks by size as well


class RowBuffer:
    """Collects rows and hands them out as READ_SCHEMA tables of at most `block_rows` rows (and
    about MAX_BLOCK_BYTES of payload)."""

    def __init__(self, block_rows: int, keep: tuple[tuple[str, pa.DataType], ...] = ()):
        self.block_rows = block_rows
        self.keep = keep
        self.columns: dict[str, list[Any]] = {name: [] for name in READ_SCHEMA.names}
        self.kept: list[list[Any]] = [[] for _ in keep]
        self.payload_bytes = 0

    def __len__(self) -> int:
        return len(self.columns["id"])

    def add(
        self,
        row_id: str,
        text: Any = None,
        image: bytes | None = None,
        image_ref: str | None = None,
        images: list[dict[str, Any]] | None = None,
        video: VideoValue | None = None,
        kept: tuple[Any, ...] | None = None,
    ) -> None:
        video = video or VideoValue()
        self.payload_bytes += len(text or "") + len(image or b"") + len(video.data or b"")
        for element in (*(images or ()), *(video.frames or ())):
            self.payload_bytes += len(element["bytes"] or b"")
        self._append(
            row_id, STATUS_OK, None, None, text, image, image_ref, images, *video.columns()
        )
        self._keep(kept)

    def add_error(
        self, row_id: str, reason: str, code: str, kept: tuple[Any, ...] | None = None
    ) -> None:
        self._append(row_id, STATUS_ERROR, reason, code, None, None, None, None, *VIDEO_NULLS)
        self._keep(kept)

    def _append(self, *values: Any) -> None:
        for name, value in zip(READ_SCHEMA.names, values, strict=True):
            self.columns[name].append(value)

    def _keep(self, kept: tuple[Any, ...] | None) -> None:
        for values, value in zip(self.kept, kept or (None,) * len(self.kept), strict=True):
            values.append(value)

    def full(self) -> bool:
        return len(self) >= self.block_rows or self.payload_bytes >= MAX_BLOCK_BYTES

    def flush(self) -> pa.Table:
        table = pa.table(self.columns, schema=READ_SCHEMA)
        for (name, kind), values in zip(self.keep, self.kept, strict=True):
            table = table.append_column(
                pa.field(KEEP_PREFIX + name, kind), kept_array(name, kind, values)
            )
        self.columns = {name: [] for name in READ_SCHEMA.names}
        self.kept = [[] for _ in self.keep]
        self.payload_bytes = 0
        return table


@dataclass(frozen=True)
class VideoValue:
    """A row's video, as READ_SCHEMA carries it: the file's bytes, a reference to it, or its
    frames (elements like `images`'), and the row's own fps / max_frames."""

    data: bytes | None = None
    ref: str | None = None
    frames: list[dict[str, Any]] | None = None
    fps: float | None = None
    max_frames: int | None = None

    def columns(self) -> tuple[Any, ...]:
        return (self.data, self.ref, self.frames, self.fps, self.max_frames)


VIDEO_NULLS = VideoValue().columns()


class RowSource:
    """Validates the id / text / image / video values of one row and files it into a
    RowBuffer."""

    def __init__(self, spec: ReadSpec, file: InputFile, fs_prefix: str):
        self.spec = spec
        self.file = file
        self.fs_prefix = fs_prefix
        self.folder = posixpath.dirname(file.path)

    def derived_id(self, row: int) -> str:
        return f"{self.file.relpath}:{row}"

    def add(
        self,
        buffer: RowBuffer,
        row: int,
        record_id: Any,
        text: Any,
        image: Any,
        video: Any = None,
        fps: Any = None,
        max_frames: Any = None,
        *,
        kept: tuple[Any, ...] | None = None,
        kept_problem: str | None = None,
    ) -> None:
        # A row without a usable id keeps the derived one, so its error row can still be found.
        row_id = self.derived_id(row)
        if self.spec.id_column is not None:
            if record_id is None or record_id == "":
                buffer.add_error(
                    row_id, f"id column {self.spec.id_column!r} is empty", CODE_INVALID_ROW, kept
                )
                return
            if isinstance(record_id, bool) or not isinstance(record_id, (str, int)):
                reason = f"id column {self.spec.id_column!r} must hold strings or integers, got {type(record_id).__name__}"
                buffer.add_error(row_id, reason, CODE_INVALID_ROW, kept)
                return
            row_id = str(record_id)
            problem = _not_utf8(row_id)
            if problem is not None:  # Arrow cannot hold it: the row keeps its derived id
                reason = f"id column {self.spec.id_column!r} {problem}"
                buffer.add_error(self.derived_id(row), reason, CODE_INVALID_INPUT)
                return
        if kept_problem is not None:  # a carried value that its column's type cannot hold
            buffer.add_error(row_id, kept_problem, CODE_INVALID_INPUT)
            return
        if text is not None and not isinstance(text, str):
            reason = (
                f"column {self.spec.text_column!r} must hold strings, got {type(text).__name__}"
            )
            buffer.add_error(row_id, reason, CODE_INVALID_INPUT, kept)
            return
        if text is not None and (problem := _not_utf8(text)) is not None:
            buffer.add_error(
                row_id, f"column {self.spec.text_column!r} {problem}", CODE_INVALID_INPUT
            )
            return
        image_bytes, image_ref, images = None, None, None
        if self.spec.image_column is not None and image is not None:
            if isinstance(image, (list, tuple)):
                images, problem = self._image_list(image)
            else:
                image_bytes, image_ref, problem = self._image_value(image)
            if problem is not None:
                buffer.add_error(row_id, problem, CODE_INVALID_INPUT, kept)
                return
        video_value = None
        if self.spec.video_column is not None:
            video_value, problem = self._video(video, fps, max_frames)
            if problem is not None:
                buffer.add_error(row_id, problem, CODE_INVALID_INPUT, kept)
                return
        buffer.add(
            row_id,
            text=text,
            image=image_bytes,
            image_ref=image_ref,
            images=images,
            video=video_value,
            kept=kept,
        )

    def _video(self, value: Any, fps: Any, max_frames: Any) -> tuple[VideoValue | None, str | None]:
        """A row's video: a file (bytes, a path relative to the table, a URL) or a list of frame
        images; with the row's fps / max_frames (their ranges are the core's to check)."""
        fps, problem = _number(fps, FPS_COLUMN, float)
        if problem is None:
            max_frames, problem = _number(max_frames, MAX_FRAMES_COLUMN, int)
        if problem is not None:
            return None, problem
        column = self.spec.video_column
        if value is None:
            return VideoValue(fps=fps, max_frames=max_frames), None
        if isinstance(value, (list, tuple)):
            frames, problem = self._image_list(value, column, "frames")
            return VideoValue(frames=frames, fps=fps, max_frames=max_frames), problem
        data, reference, problem = self._image_value(value, column)
        return VideoValue(data, reference, None, fps, max_frames), problem

    def _image_list(
        self, values: Any, column: str | None = None, what: str = "images"
    ) -> tuple[list[dict[str, Any]] | None, str | None]:
        """A list of images for one row (one item with several images, in list order; or a
        video's frames, in order)."""
        column = column or self.spec.image_column
        if len(values) > MAX_IMAGES_PER_ROW:
            return None, (
                f"column {column!r} holds {len(values)} {what} in one row, more "
                f"than {MAX_IMAGES_PER_ROW}"
            )
        elements = []
        for position, value in enumerate(values):
            data, reference, problem = self._image_value(value, column)
            if problem is None and data is None and reference is None:
                problem = "is empty"  # a page that is missing must not shift the others
            if problem is not None:
                return None, f"{column}[{position}]: {problem}"
            elements.append({"bytes": data, "ref": reference})
        return elements, None

    def _image_value(
        self, value: Any, column: str | None = None
    ) -> tuple[bytes | None, str | None, str | None]:
        if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes", "path"}
            value = value.get("bytes") or value.get("path")
            if value is None:
                return None, None, None
        if isinstance(value, (bytes, bytearray)):
            return bytes(value), None, None
        if isinstance(value, str):
            problem = _not_utf8(value)
            if problem is not None:
                return None, None, f"column {column or self.spec.image_column!r} {problem}"
            return None, self.resolve_reference(value), None
        return (
            None,
            None,
            f"column {column or self.spec.image_column!r} must hold paths, URLs or bytes (or a list of them), got {type(value).__name__}",
        )

    def resolve_reference(self, value: str) -> str:
        """Relative image paths are relative to the table that names them."""
        if not value or "://" in value or value.startswith(("data:", "/", "~")):
            return value
        return f"{self.fs_prefix}{posixpath.normpath(posixpath.join(self.folder, value))}"


def _number(value: Any, column: str, kind: type) -> tuple[Any, str | None]:
    """A per-row fps (float) or max_frames (int): a number, or a CSV field's text of one;
    null / empty is None."""
    if value is None or value == "":
        return None, None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None, f"column {column!r} must hold numbers, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"column {column!r} must hold numbers, got {type(value).__name__}"
    if value != value:  # NaN: a null in a float column
        return None, None
    if kind is int:
        if not float(value).is_integer():
            return None, f"column {column!r} must hold whole numbers, got {value!r}"
        return int(value), None
    return float(value), None


def _not_utf8(value: str) -> str | None:
    """Why `value` cannot be stored (None when it can). JSON's `\\ud800` escapes and Python
    strings may hold lone surrogates, which Arrow (UTF-8) refuses for the whole block; such a
    value fails its own row instead. The reason names the position, never the character."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        return (
            f"holds a lone surrogate U+{ord(value[error.start]):04X} at character {error.start}, "
            "which is not valid Unicode text (it cannot be encoded as UTF-8)"
        )
    return None


# ---------------------------------------------------------------------------- formats
def read_file(
    file: InputFile, fs: pafs.FileSystem, fs_prefix: str, spec: ReadSpec
) -> Iterator[pa.Table]:
    """READ_SCHEMA tables for `file`, in row order."""
    reader = {
        "parquet": _read_parquet,
        "jsonl": _read_jsonl,
        "csv": _read_csv,
        "txt": _read_txt,
    }.get(file.format)
    if reader is None:
        raise ValueError(f"{file.path}: format {file.format!r} is not a row format")
    source = RowSource(spec, file, fs_prefix)
    buffer = RowBuffer(spec.block_rows, spec.keep)
    rows = 0  # rows handed to the buffer so far
    failure: BaseException | None = None
    for attempt in range(1, READ_ATTEMPTS + 1):
        target = _Counting(buffer, skip=rows)
        try:
            for _ in reader(file, fs, spec, source, target):
                if buffer.full():
                    yield buffer.flush()
        except FILE_ERRORS as error:
            failure, rows = error, max(rows, target.seen)
            logger.warning(
                "%s: read failed after %d rows (attempt %d of %d): %s",
                file.path,
                rows,
                attempt,
                READ_ATTEMPTS,
                error,
            )
        else:
            failure, rows = None, max(rows, target.seen)
            break
    if rows == 0 and _is_empty(fs, file.path):
        buffer.add_error(file.relpath, "the file is empty (0 bytes)", CODE_EMPTY_FILE)
    elif failure is not None:
        where = f"past row {rows} " if rows else ""
        buffer.add_error(
            file.relpath,
            f"cannot read the file {where}({READ_ATTEMPTS} attempts): "
            f"{type(failure).__name__}: {failure}",
            CODE_UNREADABLE_FILE,
        )
    if len(buffer):
        yield buffer.flush()


class _Counting:
    """What a reader hands its rows to: passes them on to the buffer, counting them, except the
    first `skip`, which a read that failed had already handed on."""

    def __init__(self, buffer: RowBuffer, skip: int):
        self.buffer, self.skip, self.seen = buffer, skip, 0

    def add(self, *args: Any, **kwargs: Any) -> None:
        self.seen += 1
        if self.seen > self.skip:
            self.buffer.add(*args, **kwargs)

    def add_error(self, *args: Any, **kwargs: Any) -> None:
        self.seen += 1
        if self.seen > self.skip:
            self.buffer.add_error(*args, **kwargs)


def _is_empty(fs: pafs.FileSystem, path: str) -> bool:
    info = fs.get_file_info(path)
    return info.type == pafs.FileType.File and info.size == 0


def read_image_files(
    files: list[InputFile], fs: pafs.FileSystem, spec: ReadSpec
) -> Iterator[pa.Table]:
    """An image folder: each file is one item, its id the file's relative path."""
    buffer = RowBuffer(spec.block_rows)
    for file in files:
        try:
            with fs.open_input_stream(file.path) as stream:
                data = stream.read()
        except OSError as error:
            buffer.add_error(file.relpath, f"cannot read image file: {error}", CODE_READ_ERROR)
        else:
            if data:
                buffer.add(file.relpath, image=data)
            else:
                buffer.add_error(file.relpath, "the file is empty (0 bytes)", CODE_EMPTY_FILE)
        if buffer.full():
            yield buffer.flush()
    if len(buffer):
        yield buffer.flush()


def read_video_files(
    files: list[InputFile], fs: pafs.FileSystem, fs_prefix: str, spec: ReadSpec
) -> Iterator[pa.Table]:
    """A video folder: each file is one item, its id the file's relative path. The rows carry a
    reference, not the bytes (videos are large): the prepare task streams a local file and
    fetches a remote one, where the core's per-item limits apply."""
    buffer = RowBuffer(spec.block_rows)
    for file in files:
        if file.size == 0:
            buffer.add_error(file.relpath, "the file is empty (0 bytes)", CODE_EMPTY_FILE)
        else:
            buffer.add(file.relpath, video=VideoValue(ref=fs_prefix + file.path))
        if buffer.full():
            yield buffer.flush()
    if len(buffer):
        yield buffer.flush()


DEFAULT_ID_COLUMN = "id"


def kept_names(spec: ReadSpec) -> list[str]:
    return [name for name, _ in spec.keep]


def kept_array(name: str, kind: pa.DataType, values: list[Any]) -> pa.Array:
    """A carried column's values in its planned Arrow type; a value that does not fit it (a JSON
    field whose type changes between records) fails the read naming the column."""
    try:
        return pa.array(values, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as error:
        raise ValueError(
            f"carried column {name!r}: a value does not fit the column's type {kind} "
            f"(taken from the first input file): {error}"
        ) from error


def _misfit(keep: tuple[tuple[str, pa.DataType], ...], values: tuple[Any, ...]) -> str | None:
    """Why a JSON record's carried values do not fit their columns' planned types (inferred from
    the first records, see `carried`), or None. Arrow would refuse some (a string in an int64
    column) and silently change others (1.5 in an int64 column becomes 1, a struct drops a key it
    does not have), so a value fits only when it converts AND reads back equal; the row is then
    an `invalid_input` error naming the column, never a crash of the read nor changed data."""
    for (name, kind), value in zip(keep, values, strict=True):
        if value is None:
            continue
        try:
            converted = pa.array([value], type=kind).to_pylist()[0]
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            converted = _UNCONVERTIBLE
        if converted is _UNCONVERTIBLE or not _same_json(value, converted):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            return (
                f"carried column {name!r} must hold {kind} values (the type inferred from the "
                f"first records of the first input file), got {_json_type(value)} {shown}"
            )
    return None


_UNCONVERTIBLE = object()


def _same_json(value: Any, converted: Any) -> bool:
    """Whether Arrow's reading of a JSON value is that value: equal numbers (1 and 1.0 are),
    booleans only as booleans, lists element by element, objects key by key (a key the value
    lacks reads as null; a key the column lacks would be lost)."""
    if isinstance(value, dict):
        return (
            isinstance(converted, dict)
            and set(value) <= set(converted)
            and all(
                _same_json(value.get(key), item) if key in value else item is None
                for key, item in converted.items()
            )
        )
    if isinstance(value, list):
        return (
            isinstance(converted, list)
            and len(value) == len(converted)
            and all(_same_json(a, b) for a, b in zip(value, converted, strict=True))
        )
    if value is None or converted is None:
        return value is None and converted is None
    if isinstance(value, bool) or isinstance(converted, bool):
        return type(value) is type(converted) and value == converted
    if isinstance(value, float) and isinstance(converted, float) and value != value:
        return converted != converted  # NaN (Python's json reads it) stays NaN
    numbers = isinstance(value, (int, float)) and isinstance(converted, (int, float))
    return (numbers or type(value) is type(converted)) and value == converted


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    return names.get(type(value), "object") if not isinstance(value, dict) else "object"


def has_column(file: InputFile, fs: pafs.FileSystem, name: str) -> bool | None:
    """Whether a table file has column `name` (a JSON lines file: its first record has the key);
    None when the file cannot tell (unreadable, empty, not a table). Reads a footer or a line."""
    try:
        if file.format == "parquet":
            with fs.open_input_file(file.path) as handle:
                return name in pq.read_schema(handle).names
        if file.format in ("jsonl", "csv"):
            with _open_lines(file, fs) as lines:
                for line in lines:
                    if not line.strip():
                        continue
                    if file.format == "csv":
                        text = line.decode("utf-8-sig")
                        delimiter = "\t" if ".tsv" in file.path.lower() else ","
                        return name in next(csv.reader([text], delimiter=delimiter))
                    record = json.loads(line)
                    return name in record if isinstance(record, dict) else None
    except (*FILE_ERRORS, ValueError):
        return None
    return None


def _require_columns(file: InputFile, available: list[str], spec: ReadSpec) -> None:
    wanted = [spec.text_column] if spec.image_column is None else []
    if spec.id_column is not None:
        wanted.append(spec.id_column)
    wanted.extend(name for name, _ in spec.keep)
    missing = [name for name in wanted if name not in available]
    content = [name for name in (spec.image_column, spec.video_column) if name is not None]
    if content and not any(name in available for name in (spec.text_column, *content)):
        missing.append(" or ".join((spec.text_column, *content)))
    if missing:
        raise ValueError(
            f"{file.path}: missing column(s) {missing}; its columns are: {', '.join(available)}"
        )


def _read_parquet(
    file: InputFile, fs: pafs.FileSystem, spec: ReadSpec, source: RowSource, buffer: RowBuffer
):
    parquet = pq.ParquetFile(fs.open_input_file(file.path))
    available = parquet.schema_arrow.names
    _require_columns(file, available, spec)
    names = [
        name
        for name in (spec.id_column, spec.text_column, *spec.media_columns, *kept_names(spec))
        if name and name in available
    ]
    # Row group by row group: a corrupt group then costs only itself and what follows it, not
    # the rows before it that a batch crossing into it would take along.
    batches = (
        batch
        for group in range(parquet.num_row_groups)
        for batch in parquet.iter_batches(
            batch_size=spec.block_rows, row_groups=[group], columns=list(dict.fromkeys(names))
        )
    )
    row = 0
    for batch in batches:
        count = batch.num_rows
        ids = _column(batch, spec.id_column, count)
        texts = _column(batch, spec.text_column, count)
        images = _column(batch, spec.image_column, count)
        videos = _video_columns(batch, spec, count)
        kept = [_column(batch, name, count) for name in kept_names(spec)]
        for offset in range(count):
            source.add(
                buffer,
                row + offset,
                ids[offset],
                texts[offset],
                images[offset],
                *(values[offset] for values in videos),
                kept=tuple(column[offset] for column in kept) if kept else None,
            )
            yield
        row += count


def _video_columns(batch: pa.RecordBatch, spec: ReadSpec, count: int) -> list[list[Any]]:
    """The video, fps and max_frames columns' values (all None without a video column)."""
    if spec.video_column is None:
        return []
    return [
        _column(batch, name, count) for name in (spec.video_column, FPS_COLUMN, MAX_FRAMES_COLUMN)
    ]


def _column(batch: pa.RecordBatch, name: str | None, count: int) -> list[Any]:
    if name is None or name not in batch.schema.names:
        return [None] * count
    return batch.column(name).to_pylist()


def _open_lines(file: InputFile, fs: pafs.FileSystem) -> io.BufferedReader:
    compression = "detect" if file.path.lower().endswith(COMPRESSION_SUFFIXES) else None
    return io.BufferedReader(fs.open_input_stream(file.path, compression=compression), 1 << 20)


def _read_jsonl(
    file: InputFile, fs: pafs.FileSystem, spec: ReadSpec, source: RowSource, buffer: RowBuffer
):
    wanted = (spec.id_column, spec.text_column, spec.image_column)
    video_keys = (spec.video_column, FPS_COLUMN, MAX_FRAMES_COLUMN) if spec.video_column else ()
    first = True
    with _open_lines(file, fs) as lines:
        for row, line in enumerate(lines):
            if not line.strip():
                continue  # a blank line is not a record (rows keep their line numbers)
            if first and line.lstrip().startswith(b"["):
                raise ValueError(
                    f"{file.path} holds a JSON array; JSON lines input needs one object per line"
                )
            first = False
            try:
                record = json.loads(line)
            except ValueError as error:  # also covers bytes that are not UTF-8
                buffer.add_error(
                    source.derived_id(row), f"line is not valid JSON: {error}", CODE_INVALID_ROW
                )
                yield
                continue
            if not isinstance(record, dict):
                buffer.add_error(
                    source.derived_id(row),
                    f"line is a JSON {type(record).__name__}, not an object",
                    CODE_INVALID_ROW,
                )
                yield
                continue
            record_id, text, image = (record.get(key) if key else None for key in wanted)
            kept = tuple(record.get(name) for name in kept_names(spec)) if spec.keep else None
            misfit = _misfit(spec.keep, kept) if kept else None
            source.add(
                buffer,
                row,
                record_id,
                text,
                image,
                *map(record.get, video_keys),
                kept=None if misfit else kept,
                kept_problem=misfit,
            )
            yield


def _read_csv(
    file: InputFile, fs: pafs.FileSystem, spec: ReadSpec, source: RowSource, buffer: RowBuffer
):
    name = file.path.lower()
    for suffix in COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    delimiter = "\t" if name.endswith(".tsv") else ","
    csv.field_size_limit(
        min(sys.maxsize, 2**31 - 1)
    )  # documents are often longer than csv's 128 KiB default
    with _open_lines(file, fs) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        records = csv.reader(text, delimiter=delimiter)
        try:
            header = next(records, None)
            if header is None:
                return
            _require_columns(file, header, spec)
            keys = [spec.id_column, spec.text_column, spec.image_column]
            if spec.video_column is not None:
                keys += [spec.video_column, FPS_COLUMN, MAX_FRAMES_COLUMN]
            positions = [header.index(key) if key and key in header else None for key in keys]
            kept_at = [header.index(name) for name in kept_names(spec)]
            row = 0
            for record in records:
                if not record:
                    continue  # blank line
                if len(record) != len(header):
                    buffer.add_error(
                        source.derived_id(row),
                        f"CSV record has {len(record)} fields, the header has {len(header)}",
                        CODE_INVALID_ROW,
                    )
                else:
                    record_id, value, image, *video = (
                        record[at] if at is not None else None for at in positions
                    )
                    kept = tuple(record[at] for at in kept_at) if kept_at else None
                    source.add(
                        buffer,
                        row,
                        record_id,
                        value,
                        image or None,
                        *(v or None for v in video),
                        kept=kept,
                    )
                row += 1
                yield
        except UnicodeDecodeError as error:
            raise ValueError(f"{file.path} is not UTF-8 text: {error}") from error
        except csv.Error as error:
            raise ValueError(f"{file.path}: malformed CSV: {error}") from error


def _read_txt(
    file: InputFile, fs: pafs.FileSystem, spec: ReadSpec, source: RowSource, buffer: RowBuffer
):
    with _open_lines(file, fs) as lines:
        for row, line in enumerate(lines):
            try:
                text = line.decode("utf-8").removesuffix("\n").removesuffix("\r")
            except UnicodeDecodeError as error:
                buffer.add_error(
                    source.derived_id(row), f"line is not valid UTF-8: {error}", CODE_INVALID_ROW
                )
            else:
                # One document per line: an empty line is an empty document, which the core rejects.
                source.add(buffer, row, None, text, None)
            yield
