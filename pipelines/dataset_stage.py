"""`embed_dataset`: the job's embedding stages applied to any Ray Dataset, composed with the
user's own `read_*` / `map` / `write_*` (as `ray.data.llm.build_processor` is):

    ds = ray.data.read_parquet("s3://bucket/docs/")
    ds = embed_dataset(ds, EmbedStageConfig(model="Qwen/Qwen3-Embedding-0.6B", text_column="body"))
    ds.write_parquet("s3://bucket/vectors/")

It is the same pipeline as the batch job's middle: CPU `prepare` tasks (the core's `Preparer`:
validate, format, tokenise, load images) -> an actor pool of model replicas (one `Embedder`
each, the core's token-budget batching) -> here, the user's rows back with their own columns
and five more (names configurable): the vector, its token count, a status (`ok` / `error`), the
error's reason and its code. A bad row (empty or null text, a wrong type, an unreadable image,
an over-long input with `truncate=False`) is an `error` row with a null vector, never an
exception that stops the pipeline; every input row comes out exactly once.

`run_embedding_job` builds its pipeline with the same stages (`map_stages`); the job adds what needs
row ids and an output folder it owns: resume, the manifest, and the bound on replica deaths per
batch (its ledger keys batches by their ids, which a user's dataset need not have).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from qwen3_embed.chunking import check_settings
from qwen3_embed.precision import PRECISIONS, RANGED_PRECISIONS, PrecisionSpec, check_ranges
from qwen3_embed_layers.config_base import LoadFields, ReadableConfig, ReplicaFields

from .config import DEFAULT_BATCH_ROWS, DEFAULT_EMBED_ROWS, storage_option_pairs
from .map_stages import StageResources, apply_stages, embed_stage, prepare_stage
from .readers import FPS_COLUMN, MAX_FRAMES_COLUMN, ReadSpec, RowBuffer, RowSource
from .stages import EmbedSettings, EmbedWorker, PrepareSettings, prepare_batch

if TYPE_CHECKING:
    from ray.data import Dataset

logger = logging.getLogger(__name__)

CHUNK_PLACE_COLUMNS = ("chunk_index", "char_start", "char_end")
# The user's columns travel through the stages under this prefix, so that names the stages use
# internally (`id`, `text`, `status`, ...) stay free for the user's own columns.
USER_PREFIX = "__user__."


class EmbedStageConfig(LoadFields, ReplicaFields, ReadableConfig):
    """What `embed_dataset` embeds and how; validated on construction (`InvalidConfigError`).
    The model-loading, replica and batching fields mean what the batch job's fields of the same
    names mean (see `JobConfig`)."""

    what = "embed stage config"

    text_column: str | None = Field(
        "text", min_length=1, description="None: no text (a VL model's image-only rows)"
    )
    image_column: str | None = Field(
        None, min_length=1, description="VL: paths, URLs, bytes, data URIs, HF Images, lists"
    )
    dim: int | None = Field(
        None, strict=True, description="Matryoshka dimension; default: the model's hidden size"
    )
    video_column: str | None = Field(
        None,
        min_length=1,
        description="VL: video files (paths, URLs, bytes) or lists of frame images; the "
        "dataset's `fps` / `max_frames` columns, when it has them, apply to video files",
    )
    instruction: str | None = Field(None, description="embed rows as queries with this instruction")
    precision: Literal[PRECISIONS] = Field(  # type: ignore[valid-type]
        "float32",
        description="the embedding column's precision (qwen3_embed.precision: "
        "sentence-transformers' quantize_embeddings rules)",
    )
    ranges: tuple[tuple[float, ...], tuple[float, ...]] | None = Field(
        None,
        description="int8/uint8: per-dimension [[min...], [max...]], e.g. a batch job's "
        "manifest's precision.ranges or qwen3_embed.precision.calibration_ranges(sample)",
    )
    truncate: bool = Field(True, strict=True, description="off: over-long inputs become error rows")
    chunk_tokens: int | None = Field(
        None,
        ge=1,
        strict=True,
        description="split each text into chunks of at most N tokens as embedded (the job's "
        "--chunk-tokens): one output row per chunk, the row's columns repeated, plus "
        "chunk_index, char_start, char_end",
    )
    chunk_overlap: int = Field(0, ge=0, strict=True, description="tokens neighbouring chunks share")
    batch_rows: int | None = Field(
        None, ge=1, strict=True, description="rows per prepare task batch and per replica call"
    )
    storage_options: tuple[tuple[str, Any], ...] = Field(
        (), description="for remote images (s3://, gs://, ...)"
    )
    # Names of the columns the stage adds; the user's own columns keep theirs.
    embedding_column: str = Field("embedding", min_length=1)
    num_tokens_column: str = Field("num_tokens", min_length=1)
    status_column: str = Field("embedding_status", min_length=1)
    error_column: str = Field("embedding_error", min_length=1)
    code_column: str = Field("embedding_error_code", min_length=1)

    @field_validator("storage_options", mode="before")
    @classmethod
    def _options(cls, value: Any) -> tuple[tuple[str, Any], ...]:
        return storage_option_pairs(value)

    @field_validator("ranges", mode="before")
    @classmethod
    def _ranges(cls, value: Any) -> Any:
        # A numpy (2, dim) array, as `calibration_ranges` returns it, or nested lists.
        return None if value is None else [list(map(float, row)) for row in value]

    @model_validator(mode="after")
    def _columns(self) -> EmbedStageConfig:
        if self.text_column is None and self.image_column is None and self.video_column is None:
            raise ValueError("give text_column, image_column, video_column or several")
        if self.precision in RANGED_PRECISIONS and self.ranges is None:
            raise ValueError(
                f"precision {self.precision!r} needs ranges: [[min per dim...], [max per dim...]] "
                "(a batch job's manifest's precision.ranges, or "
                "qwen3_embed.precision.calibration_ranges of a sample's float32 vectors)"
            )
        if self.precision not in RANGED_PRECISIONS and self.ranges is not None:
            raise ValueError(f"ranges apply to int8 and uint8 only, not to {self.precision!r}")
        if len(set(self.output_columns)) != len(self.output_columns):
            raise ValueError(
                f"the output column names must differ, got {list(self.output_columns)}"
            )
        return self

    @property
    def output_columns(self) -> tuple[str, ...]:
        return (
            self.embedding_column,
            self.num_tokens_column,
            self.status_column,
            self.error_column,
            self.code_column,
        )

    @property
    def chunk_columns(self) -> tuple[str, ...]:
        """The chunk's place in its row's text, added with chunking (null on error rows)."""
        return CHUNK_PLACE_COLUMNS if self.chunk_tokens is not None else ()


@dataclass(frozen=True)
class StageColumns:
    """How a user's rows map to the stages' rows and back (travels to the workers)."""

    text: str | None
    image: str | None  # None for text models: images are never read
    outputs: tuple[str, ...]  # embedding, num_tokens, status, error, code
    base_dir: str  # relative image paths are relative to the driver's working directory
    video: str | None = None  # None for text models: videos are never read
    chunk_columns: tuple[str, ...] = ()  # chunk_index, char_start, char_end with chunking


def embed_dataset(dataset: Dataset, config: EmbedStageConfig) -> Dataset:
    """`dataset` with every row embedded: its own columns, then `config.output_columns`. Lazy,
    like any Ray Data transform; the model's config and tokenizer are checked here (no weights),
    so a wrong model, dim or column setting fails now rather than inside the pipeline."""
    import ray

    from qwen3_embed import Preparer

    model = os.path.abspath(config.model) if os.path.isdir(config.model) else config.model
    preparer = Preparer.from_pretrained(model, config.max_length, config.revision)  # no weights
    family = preparer.info.family
    dim = preparer.validate_dim(config.dim)
    for name in ("image_column", "video_column"):
        if getattr(config, name) is not None and family != "vl":
            raise ValueError(
                f"{name}={getattr(config, name)!r} needs a VL model; {config.model} is a {family} model"
            )
    if config.ranges is not None:
        check_ranges(config.ranges, dim)
    if config.text_column is None and family != "vl":
        raise ValueError(f"{config.model} is a text model: give text_column")
    if config.chunk_tokens is not None:
        check_settings(preparer, config.chunk_tokens, config.chunk_overlap, config.instruction)
    if not ray.is_initialized():
        ray.init()  # what Ray Data would do when the dataset runs; needed now to count GPUs
    columns = StageColumns(
        text=config.text_column,
        image=config.image_column,
        video=config.video_column,
        outputs=config.output_columns,
        base_dir=os.getcwd(),
        chunk_columns=config.chunk_columns,
    )
    resources = StageResources(
        prepare_rows=config.batch_rows or DEFAULT_BATCH_ROWS[family],
        # Chunked: one prepare block (its rows' chunks) per replica call, as in the job.
        embed_rows=None
        if config.chunk_tokens is not None
        else config.batch_rows or DEFAULT_EMBED_ROWS[family],
        num_replicas=config.num_replicas,
        cpus_per_replica=config.cpus_per_replica,
        gpus_per_replica=gpus_per_replica(config.gpus_per_replica),
    )
    load = dataclasses.replace(config.load_options(), model=model)
    prepare = PrepareSettings(
        load,
        config.instruction,
        config.truncate,
        config.storage_options,
        chunk_tokens=config.chunk_tokens,
        chunk_overlap=config.chunk_overlap,
    )
    embed = EmbedSettings(load, dim, precision=PrecisionSpec.of(config.precision, config.ranges))
    stages = (
        prepare_stage(prepare_user_batch, {"settings": prepare, "columns": columns}, resources),
        embed_stage(UserEmbedWorker, {"settings": embed, "columns": columns}, resources),
    )
    return apply_stages(dataset, stages)


def gpus_per_replica(requested: float | None, started_local: bool = False) -> float:
    """GPUs for each replica: `requested`, or, when None, 1 if the cluster has a GPU now."""
    import ray

    available = ray.cluster_resources().get("GPU", 0)
    if requested is None:
        if available < 1 and not started_local:
            # "auto" sees the cluster as it is now: one that autoscales GPU nodes from zero looks
            # GPU-less, and the replicas would silently run on CPUs.
            logger.warning(
                "gpus_per_replica is auto and the cluster has no GPU now: replicas run on CPU. "
                "On a cluster that autoscales GPU nodes from 0, pass --gpus-per-replica explicitly."
            )
        return 1.0 if available >= 1 else 0.0
    if requested > 0 and available < requested:
        logger.warning(
            "gpus_per_replica=%s but the cluster has %s GPU(s) now; replicas wait until an autoscaler adds them",
            requested,
            available,
        )
    return float(requested)


# ------------------------------------------------------------------ user rows <-> stage rows
class _UserRows(RowSource):
    """The job's per-row checks (text type, image values) for a user's rows, which come from no
    file: relative image paths resolve against `base_dir`."""

    def __init__(self, spec: ReadSpec, base_dir: str):
        self.spec, self.file, self.fs_prefix, self.folder = spec, None, "", base_dir

    def derived_id(self, row: int) -> str:
        return str(row)  # the stages key their logs by it; it never leaves the stage

    def resolve_reference(self, value: str) -> str:
        if not value or "://" in value or value.startswith(("data:", "/", "~")):
            return value
        return posixpath.normpath(posixpath.join(self.folder, value))


def to_stage_rows(table: pa.Table, columns: StageColumns) -> pa.Table:
    """A user's block as `READ_SCHEMA` rows, its own columns carried along (prefixed). A missing
    input column, or an output name the block already uses, is a configuration mistake: raised,
    not an error row."""
    taken = [
        name for name in (*columns.outputs, *columns.chunk_columns) if name in table.column_names
    ]
    if taken:
        raise ValueError(
            f"the dataset already has column(s) {taken}, which embed_dataset would write; name the "
            "output columns otherwise (EmbedStageConfig.embedding_column, status_column, ...)"
        )
    missing = [
        name
        for name in (columns.text, columns.image, columns.video)
        if name and name not in table.column_names
    ]
    if missing:
        raise ValueError(
            f"the dataset has no column(s) {missing}; its columns are: {', '.join(table.column_names)}"
        )
    count = table.num_rows
    texts = table.column(columns.text).to_pylist() if columns.text else [None] * count
    images = table.column(columns.image).to_pylist() if columns.image else [None] * count
    video_names = (columns.video, FPS_COLUMN, MAX_FRAMES_COLUMN) if columns.video else ()
    videos = [
        table.column(name).to_pylist() if name in table.column_names else [None] * count
        for name in video_names
    ]
    spec = ReadSpec(
        None,
        columns.text or columns.image or columns.video or "",
        columns.image,
        1024,
        columns.video,
    )
    source = _UserRows(spec, columns.base_dir)
    buffer = RowBuffer(max(count, 1))
    for row in range(count):
        source.add(buffer, row, None, texts[row], images[row], *(v[row] for v in videos))
    stage = buffer.flush()
    for name in table.column_names:
        stage = stage.append_column(
            table.schema.field(name).with_name(USER_PREFIX + name), table.column(name)
        )
    return stage


def to_user_rows(table: pa.Table, columns: StageColumns) -> pa.Table:
    """The stages' embedded rows as the user's columns, then the output columns."""
    names, arrays = [], []
    for name in table.column_names:
        if name.startswith(USER_PREFIX):
            names.append(name[len(USER_PREFIX) :])
            arrays.append(table.column(name))
    for name in columns.chunk_columns:
        names.append(name)
        arrays.append(table.column(name))
    for name, source in zip(
        columns.outputs, ("embedding", "num_tokens", "status", "error", "code"), strict=True
    ):
        names.append(name)
        arrays.append(table.column(source))
    return pa.Table.from_arrays(arrays, names=names)


def prepare_user_batch(
    table: pa.Table, settings: PrepareSettings, columns: StageColumns
) -> pa.Table:
    return prepare_batch(to_stage_rows(table, columns), settings)


class UserEmbedWorker(EmbedWorker):
    """The job's replica, returning the user's rows (`to_user_rows`)."""

    def __init__(self, settings: EmbedSettings, columns: StageColumns):
        super().__init__(settings)
        self.columns = columns

    def __call__(self, table: pa.Table) -> pa.Table:
        return to_user_rows(super().__call__(table), self.columns)
