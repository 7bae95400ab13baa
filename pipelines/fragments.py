"""Resume by input fragment: which read tasks a rerun can drop without reading one id.

A fragment is what one read task reads: one table/text file, or one group of image files. Its
key is a digest of the files' relative paths, formats, sizes and modification times and of the
settings that decide row ids, so a changed file is a new fragment (and None, untracked, when a
modification time is unknown).

Every row carries its fragment's key (`FRAGMENT_COLUMN`) from the read task to the sink, and the
fragment's last row also carries how many rows the fragment has (`FRAGMENT_ROWS_COLUMN`). The
sink writes, into each part file's own parquet footer, how many of that file's rows came from
each fragment and any totals it saw (`PROVENANCE_KEY`). Record and rows are one file, written
atomically, so there is no moment at which rows are in OUTPUT without their record.

A rerun reads only those footers: a fragment whose rows in OUTPUT add up to its total is done,
and its read task is not created at all. The ids of every part file that holds a row of a
fragment that is not done (or that has no record: files from before this layout, rows from
untracked fragments, fragments of inputs that changed) are still read and checked row by row,
exactly as before, so each id is embedded once whatever was in flight when a run stopped. What
the rerun reads by id is bounded by what was in flight, not by what is done.

A fragment whose read gave up on the file (an `unreadable_file` row) gets no total: it is never
taken as done, so a rerun reads the file again, as a rerun always did.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .discovery import InputFile, InputSet
from .rows import (
    CHUNK_COUNT_COLUMN,
    CHUNK_INDEX_COLUMN,
    CODE_UNREADABLE_FILE,
    DOC_ID_COLUMN,
    FRAGMENT_COLUMN,
    FRAGMENT_ROWS_COLUMN,
    PROVENANCE_FIELDS,
)

PROVENANCE_KEY = b"qwen3_embed.fragments"
UNTRACKED = ""  # the key untracked rows are counted under in a record: never done
IMAGES_PER_READ_TASK = 64  # image or video files per read task
MEDIA_FOLDER_FORMATS = ("images", "videos")  # a file is one item, its id its path


def read_groups(inputs: InputSet) -> list[list[InputFile]]:
    """The files of each read task: one task per table/text file (row numbers, and so derived
    ids, stay simple and exact), image and video files in groups."""
    groups = [[file] for file in inputs.files if file.format not in MEDIA_FOLDER_FORMATS]
    for media in MEDIA_FOLDER_FORMATS:  # one format per group: one reader per read task
        files = [file for file in inputs.files if file.format == media]
        groups.extend(
            files[start : start + IMAGES_PER_READ_TASK]
            for start in range(0, len(files), IMAGES_PER_READ_TASK)
        )
    return groups


def fragment_key(files: Sequence[InputFile], read_config: dict[str, Any]) -> str | None:
    """The fragment's identity, or None when some file's modification time is unknown (then an
    edited file could not be told from the one whose rows are in OUTPUT)."""
    entries = []
    for file in files:
        if file.mtime_ns is None:
            return None
        entries.append([file.relpath, file.format, file.size, file.mtime_ns])
    payload = json.dumps({"files": entries, "read": read_config}, sort_keys=True)
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def tag_rows(tables: Iterable[pa.Table], key: str | None) -> Iterator[pa.Table]:
    """`tables` (one fragment's rows, in order) with the provenance columns appended; the last
    row also gets the fragment's row count, unless the read gave up on the file."""
    pending: pa.Table | None = None
    rows = 0
    unreadable = False
    for table in tables:
        if pending is not None:
            yield _tagged(pending, key, None)
        pending = table
        rows += table.num_rows
        if key is not None and not unreadable and "code" in table.column_names:
            unreadable = bool(pc.any(pc.equal(table.column("code"), CODE_UNREADABLE_FILE)).as_py())
    if pending is not None:
        yield _tagged(pending, key, None if unreadable or key is None else rows)


def _tagged(table: pa.Table, key: str | None, total: int | None) -> pa.Table:
    count = table.num_rows
    totals = [None] * count
    if total is not None and count:
        totals[-1] = total
    table = table.append_column(PROVENANCE_FIELDS[0], pa.array([key] * count, pa.string()))
    return table.append_column(PROVENANCE_FIELDS[1], pa.array(totals, pa.int64()))


def without_provenance(table: pa.Table) -> pa.Table:
    names = [spec.name for spec in PROVENANCE_FIELDS if spec.name in table.column_names]
    return table.drop_columns(names) if names else table


def provenance(table: pa.Table) -> bytes | None:
    """The record for one part file holding `table`'s rows: rows per fragment key and the
    totals carried by its rows. None when the rows carry no provenance (a sink used without the
    job's read stage)."""
    if FRAGMENT_COLUMN not in table.column_names:
        return None
    keys = table.column(FRAGMENT_COLUMN).to_pylist()
    counts = Counter(UNTRACKED if key is None else key for key in keys)
    totals: dict[str, int] = {}
    rows_column = table.column(FRAGMENT_ROWS_COLUMN)
    if rows_column.null_count < len(rows_column):
        for key, total in zip(keys, rows_column.to_pylist(), strict=True):
            if total is not None and key is not None:
                totals[key] = int(total)
    record: dict[str, Any] = {"counts": dict(counts), "totals": totals}
    if DOC_ID_COLUMN in table.column_names:
        record["documents"] = _whole_documents(table, keys)
        # Chunk rows per fragment (the rest are whole-document error rows), for the manifest.
        chunk_rows = Counter(
            UNTRACKED if key is None else key
            for key, index in zip(keys, table.column(CHUNK_INDEX_COLUMN).to_pylist(), strict=True)
            if index is not None
        )
        record["chunks"] = dict(chunk_rows)
    return json.dumps(record, sort_keys=True).encode()


def _whole_documents(table: pa.Table, keys: list[str | None]) -> dict[str, int]:
    """With chunking, rows are chunks and a fragment's total counts documents: per fragment, the
    documents whose every chunk is in this file (a whole-document row counts as one)."""
    documents = table.column(DOC_ID_COLUMN).to_pylist()
    expected = table.column(CHUNK_COUNT_COLUMN).to_pylist()
    seen: Counter[tuple[str, str | None]] = Counter()
    wanted: dict[tuple[str, str | None], int] = {}
    whole: Counter[str] = Counter()
    for key, document, chunks in zip(keys, documents, expected, strict=True):
        key = UNTRACKED if key is None else key
        if document is None or chunks is None:  # a row failed before it had a document's place
            whole[key] += 1
            continue
        seen[(key, document)] += 1
        wanted[(key, document)] = chunks
    for pair, rows in seen.items():
        if rows == wanted[pair]:
            whole[pair[0]] += 1
    return dict(whole)


def parse_provenance(metadata: dict[bytes, bytes] | None) -> dict[str, dict[str, int]] | None:
    """A part file's record from its footer's key/value metadata, or None (no record)."""
    raw = (metadata or {}).get(PROVENANCE_KEY)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        parsed = {
            "counts": {str(k): int(v) for k, v in record["counts"].items()},
            "totals": {str(k): int(v) for k, v in record["totals"].items()},
        }
        for name in ("documents", "chunks"):  # chunked rows: totals count documents, not rows
            if name in record:
                parsed[name] = {str(k): int(v) for k, v in record[name].items()}
        return parsed
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # an unreadable record counts as none: the file's ids are read instead


def done_fragments(
    records: Iterable[dict[str, dict[str, int]] | None], wanted: set[str]
) -> dict[str, int]:
    """{key: rows in OUTPUT} of the fragments in `wanted` whose rows in OUTPUT add up to their
    total (and whose total every record agrees on). With chunking a total counts documents, and
    a record's `documents` the documents it holds whole: those must add up instead."""
    counts: Counter[str] = Counter()
    whole: Counter[str] = Counter()
    totals: dict[str, int] = {}
    conflicting: set[str] = set()
    for record in records:
        if record is None:
            continue
        counts.update(record["counts"])
        whole.update(record.get("documents", record["counts"]))
        for key, total in record["totals"].items():
            if totals.setdefault(key, total) != total:
                conflicting.add(key)
    return {
        key: counts[key]
        for key, total in totals.items()
        if key in wanted and key not in conflicting and key != UNTRACKED and whole[key] == total
    }


def needs_id_check(record: dict[str, dict[str, int]] | None, done: dict[str, int]) -> bool:
    """Whether a part file's ids must be read: it has no record, or holds a row of a fragment
    that is not done (in flight, untracked, or no longer among the inputs)."""
    return record is None or any(key not in done for key in record["counts"])
