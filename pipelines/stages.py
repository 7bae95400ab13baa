"""The two transform stages of the job, as plain callables on Arrow tables.

- `prepare_batch` (CPU tasks): the core's `Preparer.prepare_each` — validate, format the prompt,
  tokenise, load media — turning each `ok` row into token ids (+ media) or an error row.
- `EmbedWorker` (one per model replica, an actor): loads the `Embedder` once, then
  `embed_prepared` (forward, pool, Matryoshka slice, normalise) on each batch.

Both take and return `pyarrow.Table`s with fixed schemas, so they can be tested by calling them
on a table without Ray, and Ray Data moves them between processes without conversions. Columns
outside those schemas pass through both stages unchanged, row for row (error rows included):
that is how `dataset_stage.embed_dataset` carries a user's own columns to its output.

Failures around them are handled by the layers of `failure_layers` (its docstring has the
table): the stage's attempts and row-by-row fallback around both stages' blocks, and around the
replica's the run's crash bound and, inside, the item-by-item fallback of its forward and the
core's out-of-memory split. Each layer that gives up on a row writes it through `_failed_rows`:
an error row with its reason and code, never a gap.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from qwen3_embed.options import LoadOptions
from qwen3_embed.precision import PrecisionSpec

from .failure_layers import (
    FailedRows,
    embed_layers,
    items_alone_after_failure,
    prepare_layers,
)
from .ledger import CrashGuard
from .media_fetch import FetchFailed, fetch_reference
from .rows import (
    CODE_MEDIA_UNAVAILABLE,
    CODE_READ_ERROR,
    PREPARED_SCHEMA,
    READ_SCHEMA,
    REUSED_COLUMN,
    STAGE_COLUMNS,
    STATUS_ERROR,
    STATUS_OK,
    TRUNCATED_COLUMN,
    embedded_schema,
    prepared_schema,
)

logger = logging.getLogger(__name__)


def with_passthrough(out: pa.Table, source: pa.Table) -> pa.Table:
    """`out` (a stage's own columns, row for row with `source`) followed by `source`'s other
    columns, unchanged."""
    for name in source.column_names:
        if name not in STAGE_COLUMNS:
            out = out.append_column(source.schema.field(name), source.column(name))
    return out


@dataclass(frozen=True)
class PrepareSettings:
    load: LoadOptions  # only the tokenizer's part is used: model, revision, max_length
    instruction: str | None
    truncate: bool
    storage_options: tuple[tuple[str, Any], ...] = ()
    # Chunking (see `chunk_stage`): each text cut into chunks of at most this many tokens.
    chunk_tokens: int | None = None
    chunk_overlap: int = 0
    # A resumed job's ObjectRef of the sorted id digests in OUTPUT: chunks already there are
    # marked skipped after chunking (their ids exist only from here on).
    done_ref: Any = None

    @property
    def chunking(self) -> bool:
        return self.chunk_tokens is not None


@dataclass(frozen=True)
class EmbedSettings:
    load: LoadOptions
    dim: int
    ledger: str | None = None  # the run's ledger actor (see `ledger`); None outside a job
    # The output column's precision (and int8 / uint8 ranges), applied by `quantized_column`.
    precision: PrecisionSpec = PrecisionSpec()


# ------------------------------------------------------------------------------- guard
def failed_rows_in(schema: pa.Schema) -> FailedRows:
    """How the failure layers write a stage's error rows: `_failed_rows` in `schema`."""
    return lambda rows, reason, code: _failed_rows(rows, schema, reason, code)


def _failed_rows(table: pa.Table, schema: pa.Schema, reason: str, code: str) -> pa.Table:
    """`table`'s rows in `schema` with no payload: `ok` rows become errors (`reason`, `code`);
    rows already failed or skipped keep their status."""
    ok = [value == STATUS_OK for value in table.column("status").to_pylist()]
    columns = {
        "id": table.column("id"),
        "status": [
            STATUS_ERROR if flag else value
            for flag, value in zip(ok, table.column("status").to_pylist(), strict=True)
        ],
        "error": [
            reason if flag else value
            for flag, value in zip(ok, table.column("error").to_pylist(), strict=True)
        ],
        "code": [
            code if flag else value
            for flag, value in zip(ok, table.column("code").to_pylist(), strict=True)
        ],
    }
    for name in schema.names:
        if name not in columns:
            columns[name] = pa.nulls(table.num_rows, schema.field(name).type)
    return with_passthrough(pa.table(columns, schema=schema), table)


# ----------------------------------------------------------------------------- prepare
_PREPARERS: dict[tuple[str, str | None, int | None], Any] = {}


def _preparer(load: LoadOptions):
    """One Preparer per worker process: Ray reuses task workers, so the tokenizer loads once."""
    key = (load.model, load.revision, load.max_length)
    if key not in _PREPARERS:
        from qwen3_embed import Preparer

        _PREPARERS[key] = Preparer.from_options(load)
    return _PREPARERS[key]


def prepare_batch(table: pa.Table, settings: PrepareSettings) -> pa.Table:
    """READ_SCHEMA rows -> PREPARED_SCHEMA rows (token ids + encoded media for `ok` rows); other
    columns (the caller's, and the job's provenance, see `fragments`) travel on."""
    return prepare_layers(
        lambda block: _prepare_block(block, settings),
        table,
        failed_rows_in(prepared_schema(settings.chunking)),
    )


def _prepare_block(table: pa.Table, settings: PrepareSettings) -> pa.Table:
    from qwen3_embed import InputError

    preparer = _preparer(settings.load)
    count = table.num_rows
    # A READ_SCHEMA block; columns a caller's older block lacks (the video ones) read as nulls.
    columns = {
        name: (table.column(name).to_pylist() if name in table.column_names else [None] * count)
        for name in READ_SCHEMA.names
    }
    status, error, code = list(columns["status"]), list(columns["error"]), list(columns["code"])
    num_tokens: list[int | None] = [None] * count
    input_ids: list[Any] = [None] * count
    media: list[bytes | None] = [None] * count

    positions, items = [], []
    for index in range(count):
        if status[index] != STATUS_OK:
            continue
        try:
            item = _item(preparer.info.family, columns, index, settings)
        except FetchFailed as failure:  # the message says transient (retried) or final
            status[index], error[index] = STATUS_ERROR, f"cannot read media: {failure}"
            code[index] = CODE_MEDIA_UNAVAILABLE if failure.transient else CODE_READ_ERROR
            continue
        except (OSError, ValueError, ImportError) as failure:  # bad URL, no fsspec driver
            status[index], error[index], code[index] = (
                STATUS_ERROR,
                f"cannot read media: {failure}",
                CODE_READ_ERROR,
            )
            continue
        positions.append(index)
        items.append(item)
    if settings.chunking:
        from .chunk_stage import chunk_block

        return chunk_block(table, preparer, settings, positions, items, (status, error, code))
    truncated: list[bool | None] = [None] * count
    for index, result in zip(
        positions,
        preparer.prepare_each(items, settings.instruction, settings.truncate),
        strict=True,
    ):
        if isinstance(result, InputError):  # this item alone is bad
            status[index], error[index], code[index] = STATUS_ERROR, result.reason, result.code
            continue
        row = result.to_row()
        input_ids[index] = row.pop("input_ids")
        num_tokens[index] = result.num_tokens
        truncated[index] = result.truncated
        media[index] = encode_media(row) if row else None
    prepared = pa.table(
        {
            "id": columns["id"],
            "status": status,
            "error": error,
            "code": code,
            "num_tokens": num_tokens,
            "input_ids": input_ids,
            "media": media,
        },
        schema=PREPARED_SCHEMA,
    )
    prepared = prepared.append_column(
        pa.field(TRUNCATED_COLUMN, pa.bool_()), pa.array(truncated, pa.bool_())
    )
    return with_passthrough(prepared, table)


def _item(family: str, columns: dict[str, list], index: int, settings: PrepareSettings) -> Any:
    text = columns["text"][index]
    if family != "vl":
        return text
    item: dict[str, Any] = {}
    if text is not None:
        item["text"] = text
    image = columns["image"][index]
    reference = columns["image_ref"][index]
    images = columns["images"][index]
    if images is not None:  # several images: one item, pages in order
        item["image"] = [
            element["bytes"] if element["bytes"] is not None else _fetch(element["ref"], settings)
            for element in images
        ]
    elif image is not None:
        item["image"] = image
    elif reference is not None:
        item["image"] = _fetch(reference, settings)
    _add_video(item, columns, index, settings)
    return item


def _add_video(item: dict[str, Any], columns: dict[str, list], index: int, settings) -> None:
    """The row's video into its item: a file (local paths go to the core, which streams them;
    remote ones are fetched here) or its frames, as ONE video (`[frames]`: the core's
    `is_video_input` would read a list whose first frame is not an image as several videos);
    and the row's fps / max_frames, which the core checks."""
    data, reference = columns["video"][index], columns["video_ref"][index]
    frames = columns["video_frames"][index]
    if frames is not None:
        item["video"] = [
            [
                element["bytes"]
                if element["bytes"] is not None
                else _fetch(element["ref"], settings)
                for element in frames
            ]
        ]
    elif data is not None:
        item["video"] = data
    elif reference is not None:
        item["video"] = _fetch(reference, settings)
    for key, column in (("fps", "video_fps"), ("max_frames", "video_max_frames")):
        if columns[column][index] is not None:
            item[key] = columns[column][index]


def _fetch(reference: str, settings: PrepareSettings) -> str | bytes:
    """Remote images (http(s), object stores) are fetched here as bytes, retried when the failure
    is transient (see media_fetch); local paths and data URIs go to the core unchanged."""
    from qwen3_embed.vl.media import DEFAULT_MAX_BYTES

    return fetch_reference(reference, dict(settings.storage_options), DEFAULT_MAX_BYTES)


def _token_lists(column: pa.ChunkedArray) -> list[list[int]]:
    """A list<int32> column as Python lists of ints, through numpy: one C conversion per row
    instead of an Arrow scalar and an int() per token (the replica's largest cost outside its
    forward, measured by benchmarks/pipeline_overhead.py)."""
    lists: list[list[int]] = []
    for chunk in column.chunks:
        offsets = chunk.offsets.to_numpy()
        values = chunk.values.to_numpy(zero_copy_only=False)
        lists.extend(values[offsets[row] : offsets[row + 1]].tolist() for row in range(len(chunk)))
    return lists


def encode_media(row: dict[str, Any]) -> bytes:
    """The `media_*` entries of `PreparedInput.to_row()` (keys kept as they are) as one .npz
    blob: one binary column whatever the media, and no pickle."""
    buffer = io.BytesIO()
    np.savez(buffer, **{key: np.asarray(value) for key, value in row.items()})
    return buffer.getvalue()


def decode_media(blob: bytes | None) -> dict[str, np.ndarray]:
    if blob is None:
        return {}
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


# ------------------------------------------------------------------------------- embed
def quantized_column(
    matrix: np.ndarray, has_vector: np.ndarray, precision: PrecisionSpec
) -> pa.FixedSizeListArray:
    """The embedding column: each row's float32 vector (N, dim) in the output precision (the
    core's `qwen3_embed.precision` rule), null where `has_vector` is False. The quantisation
    step of the pipeline, applied after the forward as its own step."""
    values = precision.quantize(matrix) if precision.name != "float32" else matrix
    return pa.FixedSizeListArray.from_arrays(
        pa.array(values.reshape(-1)), values.shape[1], mask=pa.array(~has_vector)
    )


class EmbedWorker:
    """A model replica. Ray Data builds one per actor; heavy imports happen here, not at import."""

    # Without a run's ledger (a worker used outside a job, or built without __init__ in tests)
    # batches run unguarded: outside a job nothing restarts a dead replica to repeat them.
    guard = CrashGuard(None)
    precision = PrecisionSpec()  # float32 unless the settings say otherwise

    def __init__(self, settings: EmbedSettings):
        from transformers.utils import logging as transformers_logging

        from qwen3_embed import Embedder

        # A replica's "Loading weights" bar, relayed to the driver's terminal, is noise there.
        transformers_logging.disable_progress_bar()
        self.settings = settings
        self.precision = settings.precision
        self.embedder = Embedder.from_options(settings.load)
        self.dim = self.embedder.validate_dim(settings.dim)
        self.guard = CrashGuard(settings.ledger)  # bounds replica deaths per batch / row
        self.guard.replica_ready(self.embedder.describe())

    def __call__(self, table: pa.Table) -> pa.Table:
        # Other columns travel on (`with_passthrough`), the job's provenance among them.
        return embed_layers(
            self.guard,
            self._embed_block,
            table,
            failed_rows_in(embedded_schema(self.dim, self.precision.name)),
        )

    def _embed_block(self, table: pa.Table) -> pa.Table:
        from qwen3_embed import PreparedInput
        from qwen3_embed.dedupe import unique_inputs

        status = table.column("status").to_pylist()
        error = table.column("error").to_pylist()
        code = table.column("code").to_pylist()
        ok = [index for index, value in enumerate(status) if value == STATUS_OK]
        prepared = []
        if ok:
            ids_column = _token_lists(table.column("input_ids").take(ok))
            media_column = table.column("media").take(ok).to_pylist()
            for token_ids, blob in zip(ids_column, media_column, strict=True):
                media = {  # `PreparedInput.from_row`'s naming: media keys lose their prefix
                    key[len("media_") :]: value for key, value in decode_media(blob).items()
                }
                prepared.append(PreparedInput(input_ids=token_ids, media=media))
        # Identical inputs of this call are embedded once (see `qwen3_embed.dedupe`).
        first, slot = unique_inputs(prepared)
        vectors, failures = self._embed([prepared[p] for p in first], rows=len(prepared))
        matrix = np.zeros((table.num_rows, self.dim), dtype=np.float32)
        has_vector = np.zeros(table.num_rows, dtype=bool)
        reused: list[bool | None] = [None] * table.num_rows
        for position, index in enumerate(ok):
            distinct = slot[position]
            if distinct in failures:
                reason, failure_code = failures[distinct]
                status[index], error[index], code[index] = STATUS_ERROR, reason, failure_code
            else:
                matrix[index] = vectors[distinct]
                has_vector[index] = True
                reused[index] = first[distinct] != position
        embedding = quantized_column(matrix, has_vector, self.precision)
        num_tokens = table.column("num_tokens").to_pylist()
        num_tokens = [
            tokens if has_vector[index] else None for index, tokens in enumerate(num_tokens)
        ]
        embedded = pa.table(
            {
                "id": table.column("id"),
                "status": status,
                "error": error,
                "code": code,
                "num_tokens": pa.array(num_tokens, pa.int32()),
                "embedding": embedding,
            },
            schema=embedded_schema(self.dim, self.precision.name),
        )
        embedded = embedded.append_column(
            pa.field(REUSED_COLUMN, pa.bool_()), pa.array(reused, pa.bool_())
        )
        return with_passthrough(embedded, table)

    def _embed(
        self, prepared: Sequence[Any], rows: int | None = None
    ) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
        """Vectors for `prepared`, and {position: (reason, code)} for items the model failed on:
        the core's forward (out-of-memory split inside it) through the item-by-item fallback of
        `failure_layers` (`rows`: the call's rows before identical ones were merged)."""
        return items_alone_after_failure(
            self._embed_collecting,
            prepared,
            lambda count: np.zeros((count, self.dim), dtype=np.float32),
            rows,
            self._release_device_memory,
        )

    def _embed_collecting(
        self, prepared: Sequence[Any]
    ) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
        output = self.embedder.embed_prepared(prepared, self.dim, errors="collect")
        failures = {
            position: (error.reason, error.code) for position, error in output.failures.items()
        }
        return output.embeddings.numpy(), failures

    def _release_device_memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
