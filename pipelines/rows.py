"""The batch path's rows, in one place: their states, their error codes and every schema they
take on the way through the pipeline

    read (READ_SCHEMA, + PROVENANCE_FIELDS when tracked)  ->  prepare (PREPARED_SCHEMA)
      ->  embed (embedded_schema(dim))  ->  write: OUTPUT parts (output_schema) + _errors (ERRORS_SCHEMA)

Every row carries its state from the first stage on: `status` ok / error / skipped (already in
OUTPUT, see `resume`), and for errors a reason and one of `ROW_ERROR_CODES`. A stage passes
rows that are not `ok` through untouched, so each input row reaches the writer exactly once.
"""

from __future__ import annotations

from typing import Literal, get_args

import pyarrow as pa

RowStatus = Literal["ok", "error", "skipped"]
ROW_STATUSES: tuple[RowStatus, ...] = get_args(RowStatus)
STATUS_OK, STATUS_ERROR, STATUS_SKIPPED = ROW_STATUSES

RowErrorCode = Literal[
    "invalid_row",
    "invalid_input",
    "input_too_long",
    "input_too_large_for_device",
    "decode_limit_exceeded",
    "read_error",
    "media_unavailable",
    "unreadable_file",
    "empty_file",
    "prepare_failed",
    "embed_failed",
    "replica_crashed",
]
# Code -> what it means, for docs/batch-job.md's table and for anyone reading `_errors/`. The core's
# input codes (`qwen3_embed.vocabulary.INPUT_ERROR_CODES`) are among them: a row the core refuses
# keeps the core's code (tests/pipelines/test_row_vocabulary.py holds both lists to this).
ROW_ERROR_CODES: dict[RowErrorCode, str] = {
    "invalid_row": "the row itself cannot be read (bad JSON, a bad CSV record, a bad id)",
    "invalid_input": "a value the model cannot embed (empty or null text, a wrong type, ...)",
    "input_too_long": "over max_length with truncation off",
    "input_too_large_for_device": "out of device memory even when embedded alone",
    "decode_limit_exceeded": "a video needs more decoding than one item may take (frames, seconds)",
    "read_error": "an image or video file or reference that cannot be read (missing, no permission, a 4xx answer)",
    "media_unavailable": "a remote image still failing after every retry (transient errors)",
    "unreadable_file": "a file, or its rest, cannot be read: one row reports it",
    "empty_file": "a 0-byte file: one row reports it",
    "prepare_failed": "tokenising / loading media failed for this row alone",
    "embed_failed": "the forward pass failed for this row alone",
    "replica_crashed": "replicas died while holding this row, up to the job's bound",
}

CODE_INVALID_ROW: RowErrorCode = "invalid_row"
CODE_INVALID_INPUT: RowErrorCode = "invalid_input"
CODE_READ_ERROR: RowErrorCode = "read_error"
CODE_MEDIA_UNAVAILABLE: RowErrorCode = "media_unavailable"
CODE_UNREADABLE_FILE: RowErrorCode = "unreadable_file"
CODE_EMPTY_FILE: RowErrorCode = "empty_file"
CODE_PREPARE_FAILED: RowErrorCode = "prepare_failed"
CODE_EMBED_FAILED: RowErrorCode = "embed_failed"
CODE_REPLICA_CRASHED: RowErrorCode = "replica_crashed"

# ------------------------------------------------------------------ through the pipeline
_ID = pa.field("id", pa.string(), nullable=False)
_STATE = [
    _ID,
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("code", pa.string()),
]

IMAGE_ELEMENT = pa.struct([("bytes", pa.binary()), ("ref", pa.string())])
READ_SCHEMA = pa.schema(
    [
        *_STATE,
        pa.field("text", pa.string()),
        pa.field("image", pa.binary()),  # image bytes (image folders, binary columns)
        pa.field("image_ref", pa.string()),  # an image path / URL / data URI from a table
        # Several images for one row (a list column, a JSON array): the pages of a document, in
        # order; each element holds bytes or a reference, like `image` / `image_ref` above.
        pa.field("images", pa.list_(IMAGE_ELEMENT)),
        # A video (VL): the file's bytes, or a reference (path / URL) to it, or its frames (each
        # element like an `images` element); plus the row's own `fps` / `max_frames`, if given.
        pa.field("video", pa.binary()),
        pa.field("video_ref", pa.string()),
        pa.field("video_frames", pa.list_(IMAGE_ELEMENT)),
        pa.field("video_fps", pa.float64()),
        pa.field("video_max_frames", pa.int64()),
    ]
)

# Which input fragment a row came from (see `fragments`), on rows of a tracked read.
FRAGMENT_COLUMN = "fragment"
FRAGMENT_ROWS_COLUMN = "fragment_rows"
PROVENANCE_FIELDS = (
    pa.field(FRAGMENT_COLUMN, pa.string()),  # null: an untracked fragment
    pa.field(FRAGMENT_ROWS_COLUMN, pa.int64()),  # set on a fragment's last row only
)
TRACKED_READ_SCHEMA = pa.schema([*READ_SCHEMA, *PROVENANCE_FIELDS])

_STAGE_STATE = [*_STATE, pa.field("num_tokens", pa.int32())]
PREPARED_SCHEMA = pa.schema(
    [*_STAGE_STATE, pa.field("input_ids", pa.list_(pa.int32())), pa.field("media", pa.binary())]
)

# With chunking (`chunk_tokens`), the prepare stage turns each document into its chunks, one row
# each, `id` = "<doc_id>#<chunk_index>"; a document refused whole (empty text, a bad id) stays one
# error row under its own id, `chunk_index` null. `chunk_count` (the document's chunks) lets the
# sink tell a document written whole (see `fragments`). They travel on through the embed stage
# like any passthrough column.
DOC_ID_COLUMN, CHUNK_INDEX_COLUMN, CHUNK_COUNT_COLUMN = "doc_id", "chunk_index", "chunk_count"
CHUNK_FIELDS = (
    pa.field(DOC_ID_COLUMN, pa.string()),
    pa.field(CHUNK_INDEX_COLUMN, pa.int32()),
    pa.field("char_start", pa.int64()),
    pa.field("char_end", pa.int64()),
    pa.field(CHUNK_COUNT_COLUMN, pa.int32()),
)
# What a chunk row shows in OUTPUT, in this order after `id`.
CHUNK_OUTPUT_FIELDS = tuple(
    pa.field(spec.name, spec.type, nullable=False)
    for spec in CHUNK_FIELDS
    if spec.name != CHUNK_COUNT_COLUMN
)


def prepared_schema(chunking: bool) -> pa.Schema:
    return pa.schema([*PREPARED_SCHEMA, *CHUNK_FIELDS]) if chunking else PREPARED_SCHEMA


def vector_type(dim: int, precision: str = "float32") -> pa.DataType:
    """The embedding column's type: fixed_size_list<float32 | float16 | int8 | uint8>, `dim`
    values wide, or ceil(dim / 8) packed bytes for binary / ubinary (see qwen3_embed.precision)."""
    from qwen3_embed.precision import output_dtype, output_width

    value = pa.from_numpy_dtype(output_dtype(precision))
    return pa.list_(value, output_width(precision, dim))


def embedded_schema(dim: int, precision: str = "float32") -> pa.Schema:
    return pa.schema([*_STAGE_STATE, pa.field("embedding", vector_type(dim, precision))])


# Flags the sink counts, added after a stage's own columns and passed on like the caller's
# columns: `truncated` (prepare: the input was cut at max_length; `rows_truncated`) and `reused`
# (embed: the vector is an identical input's of the same replica call; `duplicates_reused`).
# A row failed by the stage guard lacks them (blocks are concatenated by column name, nulls
# filling in), which counts as false.
TRUNCATED_COLUMN, REUSED_COLUMN = "truncated", "reused"


# Columns the user asked to carry (`keep_columns`) travel under this prefix, so that a name the
# stages use (`text`, `status`, ...) can be carried too; the sink writes them under their names.
KEEP_PREFIX = "__keep__."


# Every column name the stages own; any other column of a block is the caller's, passed through.
STAGE_COLUMNS = frozenset(READ_SCHEMA.names) | frozenset(PREPARED_SCHEMA.names) | {"embedding"}

# ------------------------------------------------------------------------- in OUTPUT
ERRORS_SCHEMA = pa.schema(
    [
        _ID,
        pa.field("error", pa.string(), nullable=False),
        pa.field("code", pa.string(), nullable=False),
    ]
)


def output_schema(
    dim: int,
    metadata: dict[str, str],
    precision: str = "float32",
    chunking: bool = False,
    kept: tuple[pa.Field, ...] = (),
) -> pa.Schema:
    """`id`, the chunk's place in its document (with chunking), `embedding`, `num_tokens`, then
    the carried columns (`keep_columns`) with their input types."""
    return pa.schema(
        [
            _ID,
            *(CHUNK_OUTPUT_FIELDS if chunking else ()),
            pa.field("embedding", vector_type(dim, precision), nullable=False),
            pa.field("num_tokens", pa.int32(), nullable=False),
            *kept,
        ],
        metadata=metadata,
    )


def reserved_output_names() -> tuple[str, ...]:
    """Names a carried column may not take: OUTPUT's own columns, with chunking or not."""
    return ("id", *(spec.name for spec in CHUNK_OUTPUT_FIELDS), "embedding", "num_tokens")


# ------------------------------------------------------------------ the rerank job
# Its own path (pipelines/rerank_stage.py, rerank_sink.py): query groups in, one row per group
# out of the replicas, then scored rows and error rows in OUTPUT.
GROUP_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # the query id (the ledger keys batches by it)
        pa.field("query", pa.string()),
        pa.field("document_ids", pa.list_(pa.string())),
        pa.field("documents", pa.list_(pa.string())),
        pa.field("status", pa.string(), nullable=False),
        pa.field("num_pairs", pa.int32(), nullable=False),
        # Which cells are items (VL: canonical JSON, see `rerank_cells`) rather than texts: the
        # query's flag, and one per document; null (a text-only group) means texts.
        pa.field("query_item", pa.bool_()),
        pa.field("document_items", pa.list_(pa.bool_())),
    ]
)
# One row per query group (never split across write tasks, so a query's rows are written by
# one task); per-pair values are lists aligned with `document_ids`.
SCORED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # the query id
        pa.field("status", pa.string(), nullable=False),  # ok / skipped / error (the whole group)
        pa.field("num_pairs", pa.int32(), nullable=False),
        pa.field("document_ids", pa.list_(pa.string())),
        pa.field("scores", pa.list_(pa.float32())),  # null where the pair failed
        pa.field("ranks", pa.list_(pa.int32())),  # 1 = best; null where failed
        pa.field("kept", pa.list_(pa.bool_())),  # within top_n (all scored pairs without it)
        pa.field("num_tokens", pa.list_(pa.int32())),
        pa.field("errors", pa.list_(pa.string())),  # null where the pair was scored
        pa.field("codes", pa.list_(pa.string())),
        pa.field("error", pa.string()),  # why the whole group failed (no pair scored)
    ]
)


RERANKED_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("document_id", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("num_tokens", pa.int32(), nullable=False),
    ]
)
RERANK_ERRORS_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("document_id", pa.string()),
        pa.field("error", pa.string(), nullable=False),
        pa.field("code", pa.string(), nullable=False),
        pa.field("query_failed", pa.bool_(), nullable=False),
    ]
)
