"""The cells of a rerank job's query and document columns: a text, or an item (VL).

A cell is a string (a text) or an item object — a JSON object in JSONL, a struct in parquet or a
Ray Dataset — with the core's keys `text`, `image`, `video`, `fps`, `max_frames` (image and video
a reference or bytes, or a list of them, as `qwen3_embed.Reranker` takes them). On the way to the
replicas a cell travels as one string plus a flag saying which it is (never guessed from the
string: a text may look like JSON):

    cell_value(cell, folder)  ->  (string, is_item)      in the read tasks (`rerank_groups`)
    CellReader.core_value(string, is_item) -> core value  in the replicas (`rerank_stage`)

An item's string is its canonical JSON (`json.dumps(item, sort_keys=True)`): null keys dropped,
bytes as data URIs, relative paths made absolute against the folder of the table file that holds
the row. Derived ids hash that string, so they are the same in every run (resume). An item
holding only `text` IS that text: the same string, id and score as the plain cell.

In the replica, remote references (http(s), s3://, gs://, any fsspec/pyarrow URL) are fetched
with `media_fetch` (bounded retries, the job's storage options); a local file is checked to be
readable; a failure is that pair's error (`read_error`, or `media_unavailable` when transient).
"""

from __future__ import annotations

import base64
import io
import json
import posixpath
from collections.abc import Mapping
from typing import Any

from qwen3_embed.errors import Qwen3EmbedError

from .media_fetch import FetchFailed, fetch_reference
from .rows import CODE_INVALID_INPUT, CODE_MEDIA_UNAVAILABLE, CODE_READ_ERROR, RowErrorCode

MEDIA_KEYS = ("image", "video")
# The column Ray Data's readers add with `include_paths=True`: the file each row came from.
PATH_COLUMN = "path"


def holds_items(kind: Any) -> bool:
    """Whether a column of this Arrow type holds item objects: a struct, or a list of structs
    (the list form's candidates)."""
    import pyarrow as pa

    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        kind = kind.value_type
    return pa.types.is_struct(kind)


def is_relative(reference: str) -> bool:
    """A local path that names no root: what the table's folder completes (as the embedding
    job's image and video columns do, `readers.RowSource.resolve_reference`)."""
    return bool(reference) and not (
        "://" in reference or reference[:5].lower() == "data:" or reference.startswith(("/", "~"))
    )


def table_folder(prefix: str, path: str | None) -> str | None:
    """The folder of an input file as a reference prefix: `prefix` is the inputs' URL prefix
    (`discovery.InputSet.prefix`, "" when local) and `path` the file's path as Ray Data's
    `include_paths` gives it (the filesystem's path: no scheme)."""
    if not path:
        return None
    return prefix + posixpath.dirname(path)


def _resolve(value: Any, folder: str | None) -> Any:
    """References of an image / video value made absolute; bytes as data URIs; lists (several
    images, a video's frames, several videos) element by element."""
    if isinstance(value, (list, tuple)):
        return [_resolve(element, folder) for element in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _data_uri(bytes(value))
    if isinstance(value, str) and folder is not None and is_relative(value):
        scheme, sep, rest = folder.partition("://")
        if sep:  # a remote folder: join the path part only, keep the scheme's `//`
            return f"{scheme}://{posixpath.normpath(posixpath.join(rest, value))}"
        return posixpath.normpath(posixpath.join(folder, value))
    return value


def _data_uri(data: bytes) -> str:
    """Bytes as a data URI; an image's type is named (`data:image/png`), so the core's rule for a
    video list (a first element that is an image: one video given as frames) reads the same."""
    kind = "application/octet-stream"
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data[:65536])) as image:
            if image.format:
                kind = f"image/{image.format.lower()}"
    except Exception:  # noqa: BLE001 - PIL raises many types for "not an image I know"
        pass
    return f"data:{kind};base64," + base64.b64encode(data).decode("ascii")


def cell_value(cell: Any, folder: str | None) -> tuple[str | None, bool]:
    """A query or document cell -> (its string, whether it is an item). A string is a text; a
    mapping is an item (canonical JSON, references resolved against `folder`, the folder of the
    row's table; None: left as given); a `{"text": ...}` item is its text; anything else is None
    (the core refuses it for that pair, as for a null text)."""
    if isinstance(cell, str):
        return cell, False
    if not isinstance(cell, Mapping):
        return None, False
    item = {str(key): value for key, value in cell.items() if value is not None}
    if set(item) == {"text"} and isinstance(item["text"], str):
        return item["text"], False
    for key in MEDIA_KEYS:
        if key in item:
            item[key] = _resolve(item[key], folder)
    for key in ("fps", "max_frames"):
        # A parquet double holding a whole max_frames, or an int fps: the same item either way.
        value = item.get(key)
        if isinstance(value, float) and key == "max_frames" and value.is_integer():
            item[key] = int(value)
        elif isinstance(value, int) and not isinstance(value, bool) and key == "fps":
            item[key] = float(value)
    return json.dumps(item, sort_keys=True, ensure_ascii=False, default=str), True


class CellProblem(Qwen3EmbedError):
    """A cell that cannot become a core value: its pair's error (reason and row error code)."""

    code = CODE_INVALID_INPUT

    def __init__(self, reason: str, code: RowErrorCode):
        super().__init__(reason)
        self.reason, self.code = reason, code


class CellReader:
    """Cells -> the core's values, in a replica: items with their remote references fetched
    (each reference once per call, however many pairs share it). A text reranker gets items as
    they are (no fetching): the core refuses an image or video for it, naming the rule."""

    def __init__(self, storage_options: Mapping[str, Any], fetch_media: bool):
        from qwen3_embed.vl.media import DEFAULT_MAX_BYTES

        self.storage_options = dict(storage_options)
        self.fetch_media = fetch_media
        self.max_bytes = DEFAULT_MAX_BYTES
        self._fetched: dict[str, str | bytes | FetchFailed] = {}

    def core_value(self, value: str | None, is_item: bool | None, what: str) -> Any:
        """The query's or a document's value for `prepare_pairs`; raises CellProblem."""
        if not is_item or value is None:
            return value
        item = json.loads(value)
        if not self.fetch_media or not isinstance(item, dict):
            return item
        try:
            if "image" in item:
                item["image"] = self._media(item["image"])
            if "video" in item:
                item["video"] = self._video(item["video"])
        except FetchFailed as failure:
            code = CODE_MEDIA_UNAVAILABLE if failure.transient else CODE_READ_ERROR
            raise CellProblem(f"{what}: cannot read media: {failure}", code) from None
        except _Relative as relative:
            raise CellProblem(f"{what}: {relative}", CODE_INVALID_INPUT) from None
        return item

    def _video(self, video: Any) -> Any:
        """A video file, or a list: the core's rule (`is_video_input`) decides frames or several
        videos on the references as written, before fetching turns them into bytes; the fetched
        list is handed over so that the core reads it the same way."""
        if not isinstance(video, list) or not video:
            return self._media(video)
        from qwen3_embed.vl.items import looks_like_image

        if looks_like_image(video[0]):
            return [self._media(video)]  # ONE video, given as frames (wrapped: unambiguous)
        return [self._media(element) for element in video]

    def _media(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._media(element) for element in value]
        if not isinstance(value, str):
            return value  # not a reference: the core names what is wrong with it
        if is_relative(value):
            raise _Relative(
                f"{value!r} is a relative path and no table folder is known to resolve it "
                "against (rerank_dataset, or a job whose first input file holds no objects in "
                "this column): give an absolute path or a URL"
            )
        cached = self._fetched.get(value)
        if cached is None:
            try:
                cached = fetch_reference(value, self.storage_options, self.max_bytes)
            except FetchFailed as failure:
                cached = failure
            except (OSError, ValueError, ImportError) as error:  # a bad URL, no fsspec driver
                cached = FetchFailed(f"cannot fetch {value[:160]!r} ({error})", transient=False)
            self._fetched[value] = cached
        if isinstance(cached, FetchFailed):
            raise cached
        return cached


class _Relative(Qwen3EmbedError):
    """A relative media path with no table folder to resolve it against."""

    code = CODE_INVALID_INPUT
