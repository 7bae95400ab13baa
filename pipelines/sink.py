"""The job's Ray Data sink: each write task turns its rows into at most two files, the vectors
(`part-<hash>.parquet`) and the error rows (`_errors/part-<hash>.parquet`), each written
atomically under a name derived from its ids (see `layout`), with a footer record of which input
fragments its rows came from (see `fragments`). Skipped rows are counted, not
written. Each task returns its counts, so the driver sums a handful of numbers per task and
never sees a row.

Before writing, a task checks that `_manifest.json` still names its own run: a writer left over
from a killed driver stops instead of adding rows that the rerun is also producing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor
from ray.data.datasource.datasink import WriteResult

from qwen3_embed.errors import Qwen3EmbedError

from .fragments import PROVENANCE_KEY, provenance
from .layout import ERRORS_DIR, MANIFEST_FILE, part_name
from .rows import (
    CHUNK_INDEX_COLUMN,
    DOC_ID_COLUMN,
    ERRORS_SCHEMA,
    KEEP_PREFIX,
    REUSED_COLUMN,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_SKIPPED,
    TRUNCATED_COLUMN,
    output_schema,
)
from .storage import read_bytes, resolve, write_atomically


class StaleWriterError(Qwen3EmbedError, RuntimeError):
    """A newer run of the job owns OUTPUT now."""

    code = "stale_writer"


@dataclass(frozen=True)
class SinkSettings:
    output: str
    storage_options: tuple[tuple[str, Any], ...]
    dim: int
    metadata: tuple[tuple[str, str], ...]
    rows_per_file: int
    run_id: str
    precision: str = "float32"  # the embedding column's precision (see rows.vector_type)
    chunking: bool = False
    # Carried columns (`keep_columns`): their names and input Arrow types, in the user's order.
    kept: tuple[tuple[str, pa.DataType], ...] = ()


@dataclass
class WriteTally:
    """Rows this run saw, by outcome, summed over write tasks."""

    embedded: int = 0
    failed: int = 0
    skipped: int = 0
    tokens: int = 0
    files: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    truncated: int = 0  # rows embedded cut at max_length
    reused: int = 0  # rows whose vector is an identical input's of the same replica call
    # Input documents: rows without chunking; with it, chunk 0s and whole-document rows.
    documents: int = 0
    chunks: int = 0  # chunk rows (chunking only), skipped ones included

    def add(self, other: dict[str, Any]) -> None:
        for name in COUNTED:
            setattr(self, name, getattr(self, name) + int(other.get(name, 0)))
        if "documents" not in other:  # no chunking: each row is a document
            self.documents += sum(int(other[name]) for name in ("embedded", "failed", "skipped"))
        for code, count in other["error_codes"].items():
            self.error_codes[code] = self.error_codes.get(code, 0) + count

    @property
    def rows(self) -> int:
        return self.embedded + self.failed + self.skipped


COUNTED = (
    "embedded",
    "failed",
    "skipped",
    "tokens",
    "files",
    "truncated",
    "reused",
    "documents",
    "chunks",
)


# Counts a write task returns only where they apply (chunking; rows cut or reused): without
# chunking a row is a document (`WriteTally.documents` falls back to the rows).
OPTIONAL_COUNTS = ("truncated", "reused", "documents", "chunks")


def _count_true(table: pa.Table, name: str) -> int:
    if name not in table.column_names or not table.num_rows:
        return 0
    return int(pc.sum(pc.fill_null(table.column(name), False).cast(pa.int64())).as_py() or 0)


class EmbeddingSink(Datasink[dict]):
    def __init__(self, settings: SinkSettings):
        self.settings = settings
        self.tally = WriteTally()

    @property
    def min_rows_per_write(self) -> int:
        return self.settings.rows_per_file

    def get_name(self) -> str:
        return "WriteEmbeddings"

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict:
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        tables = [table for table in tables if table.num_rows]
        counts: dict[str, Any] = {name: 0 for name in COUNTED if name not in OPTIONAL_COUNTS}
        counts["error_codes"] = {}
        if not tables:
            return counts
        # By name: blocks of rows the stage guard failed lack the flag columns (see `rows`).
        table = pa.concat_tables(tables, promote_options="default")
        status = table.column("status")
        if CHUNK_INDEX_COLUMN in table.column_names:
            index = table.column(CHUNK_INDEX_COLUMN)
            counts["chunks"] = table.num_rows - index.null_count
            counts["documents"] = index.null_count + int(
                pc.sum(pc.equal(index, 0).cast(pa.int64())).as_py() or 0
            )

        vectors = table.filter(pc.equal(status, STATUS_OK))
        errors = table.filter(pc.equal(status, STATUS_ERROR))
        counts["skipped"] = int(pc.sum(pc.equal(status, STATUS_SKIPPED)).as_py() or 0)
        output = resolve(self.settings.output, dict(self.settings.storage_options))
        if vectors.num_rows or errors.num_rows:
            self._check_still_owner(output)
        if vectors.num_rows:
            part = self._vector_part(vectors)
            counts["files"] += self._write_parts(output, part, vectors)
            counts["embedded"] = part.num_rows
            counts["tokens"] = int(pc.sum(part.column("num_tokens")).as_py() or 0)
            for name, column in (("truncated", TRUNCATED_COLUMN), ("reused", REUSED_COLUMN)):
                if _count_true(vectors, column):
                    counts[name] = _count_true(vectors, column)
        if errors.num_rows:
            part = pa.Table.from_arrays(
                [errors.column("id"), errors.column("error"), errors.column("code")],
                schema=ERRORS_SCHEMA,
            )
            counts["files"] += self._write_parts(output.child(ERRORS_DIR), part, errors)
            counts["failed"] = part.num_rows
            codes = pc.value_counts(part.column("code")).to_pylist()
            counts["error_codes"] = {entry["values"]: entry["counts"] for entry in codes}
        return counts

    def _vector_part(self, vectors: pa.Table) -> pa.Table:
        """OUTPUT's columns (`rows.output_schema`) from the embedded rows."""
        kept = tuple(pa.field(name, kind) for name, kind in self.settings.kept)
        schema = output_schema(
            self.settings.dim,
            dict(self.settings.metadata),
            self.settings.precision,
            chunking=self.settings.chunking,
            kept=kept,
        )
        arrays = [
            vectors.column(name if name not in kept_names(kept) else KEEP_PREFIX + name)
            for name in schema.names
        ]
        return pa.Table.from_arrays(
            [array.cast(spec.type) for array, spec in zip(arrays, schema, strict=True)],
            schema=schema,
        )

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        for counts in write_result.write_returns:
            self.tally.add(counts)

    def _check_still_owner(self, output) -> None:
        manifest = json.loads(read_bytes(output.child(MANIFEST_FILE)))
        if manifest.get("run_id") != self.settings.run_id:
            raise StaleWriterError(
                f"run {manifest.get('run_id')} now owns {output.uri()}; this writer of run {self.settings.run_id} stops"
            )

    def _write_parts(self, folder, table: pa.Table, rows: pa.Table) -> int:
        """Files of at most `rows_per_file` rows (Ray Data hands a task at least that many, and
        blocks can be much larger); returns how many were written. `rows` is `table` as it came,
        row for row: its provenance columns (see `fragments`) become each file's record, in the
        file's own footer, so record and rows appear together or not at all."""
        pieces = _pieces(rows, self.settings.rows_per_file)
        for start, length in pieces:
            chunk = table.slice(start, length)
            record = provenance(rows.slice(start, length))
            if record is not None:
                chunk = chunk.replace_schema_metadata(
                    {**(chunk.schema.metadata or {}), PROVENANCE_KEY: record}
                )
            location = folder.child(part_name(chunk.column("id").to_pylist()))
            write_atomically(location, lambda stream, chunk=chunk: pq.write_table(chunk, stream))
        return len(pieces)


def kept_names(kept: tuple[pa.Field, ...]) -> set[str]:
    return {spec.name for spec in kept}


def _pieces(rows: pa.Table, step: int) -> list[tuple[int, int]]:
    """(start, length) of each file: `step` rows, never cutting a document's chunks apart (a
    file then holds up to one document's chunks more), so they are written together or not at
    all."""
    count = rows.num_rows
    if DOC_ID_COLUMN not in rows.column_names or count <= step:
        return [(start, min(step, count - start)) for start in range(0, count, step)]
    documents = rows.column(DOC_ID_COLUMN).to_pylist()
    pieces, start = [], 0
    while start < count:
        end = min(start + step, count)
        while end < count and documents[end] is not None and documents[end] == documents[end - 1]:
            end += 1
        pieces.append((start, end - start))
        start = end
    return pieces
