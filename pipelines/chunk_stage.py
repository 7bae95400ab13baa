"""The prepare stage with chunking on: each document becomes its chunks, one row each.

The chunks, their offsets and their token ids come from the core (`qwen3_embed.chunking`), so a
chunk row's vector is exactly `embed([text[char_start:char_end]], instruction)`. A chunk row's
id is `"<doc_id>#<chunk_index>"`; a document refused whole (empty text, a bad id, a read error)
stays one error row under its own id, so every document is accounted for. Every chunk row takes
its document's passthrough columns (carried columns, the job's provenance) along.

A resumed job gives the stage OUTPUT's ids (`PrepareSettings.done_ref`): chunk ids exist only
from here on, so this is where chunks already in OUTPUT are marked `skipped` (the read stage
skips documents by their own id, which only whole-document error rows carry). Chunking is
deterministic, so a document half written before a kill gets back the same chunk ids and only
its missing chunks are embedded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .rows import STAGE_COLUMNS, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, prepared_schema

if TYPE_CHECKING:
    from qwen3_embed import Preparer

    from .stages import PrepareSettings

_DONE: dict[Any, Any] = {}  # one DoneSet per worker process and ref: fetched once


def chunk_id(doc_id: str, index: int) -> str:
    return f"{doc_id}#{index}"


def chunk_block(
    table: pa.Table,
    preparer: Preparer,
    settings: PrepareSettings,
    positions: list[int],
    items: list[Any],
    states: tuple[list, list, list],
) -> pa.Table:
    """`table`'s documents as chunk rows (`prepared_schema(chunking=True)`), the other columns
    repeated per chunk. `positions`/`items`: the rows still `ok` and their items; `states`: the
    status, error and code lists of every row (the ones already failed stay one row each)."""
    from qwen3_embed import InputError
    from qwen3_embed.chunking import chunk_prepared

    from .stages import with_passthrough  # the stage module imports this one lazily

    status, error, code = states
    ids = table.column("id").to_pylist()
    chunks_of: dict[int, Any] = {}
    for index, item in zip(positions, items, strict=True):
        try:
            chunks_of[index] = chunk_prepared(
                preparer, item, settings.chunk_tokens, settings.chunk_overlap, settings.instruction
            )
        except InputError as failure:  # this document alone is bad
            status[index], error[index], code[index] = STATUS_ERROR, failure.reason, failure.code
    columns: dict[str, list[Any]] = {name: [] for name in prepared_schema(True).names}
    source_rows: list[int] = []
    for index in range(table.num_rows):
        chunks = chunks_of.get(index)
        if not chunks:  # a row that failed (or was skipped) before: one row, its own id
            _append(columns, ids[index], status[index], error[index], code[index])
            columns["doc_id"][-1] = ids[index]
            columns["chunk_count"][-1] = 1
            source_rows.append(index)
            continue
        for item in chunks:
            chunk = item.chunk
            _append(columns, chunk_id(ids[index], chunk.index), STATUS_OK, None, None)
            columns["num_tokens"][-1] = chunk.num_tokens  # <= chunk_tokens <= max_length: never cut
            columns["input_ids"][-1] = item.prepared.input_ids
            columns["doc_id"][-1] = ids[index]
            columns["chunk_index"][-1] = chunk.index
            columns["char_start"][-1] = chunk.char_start
            columns["char_end"][-1] = chunk.char_end
            columns["chunk_count"][-1] = len(chunks)
            source_rows.append(index)
    _skip_done(columns, settings.done_ref)
    prepared = pa.table(columns, schema=prepared_schema(True))
    # Only the passthrough columns are repeated per chunk: taking the text along would copy each
    # whole document once per chunk.
    passthrough = table.select([name for name in table.column_names if name not in STAGE_COLUMNS])
    return with_passthrough(prepared, passthrough.take(pa.array(source_rows, pa.int64())))


def _append(columns: dict[str, list[Any]], row_id: str, status: str, error: Any, code: Any) -> None:
    for values in columns.values():
        values.append(None)
    columns["id"][-1], columns["status"][-1] = row_id, status
    columns["error"][-1], columns["code"][-1] = error, code


def _skip_done(columns: dict[str, list[Any]], done_ref: Any) -> None:
    """Chunk rows whose id OUTPUT already holds become `skipped` without their token ids (the
    sink counts them; their place in the document stays, so the document is still counted)."""
    if done_ref is None:
        return
    done = _done_set(done_ref)
    ok = [row for row, value in enumerate(columns["status"]) if value == STATUS_OK]
    found = done.contains([columns["id"][row] for row in ok])
    for row, is_done in zip(ok, found, strict=True):
        if is_done:
            columns["status"][row] = STATUS_SKIPPED
            columns["input_ids"][row] = None


def _done_set(done_ref: Any):
    from .resume import DoneSet

    key = done_ref.hex() if hasattr(done_ref, "hex") else id(done_ref)
    if key not in _DONE:
        import ray

        _DONE.clear()  # one run's set at a time
        _DONE[key] = DoneSet(ray.get(done_ref))
    return _DONE[key]
