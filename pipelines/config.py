"""`JobConfig`: the one typed, immutable, validated description of an embedding job.

YAML files (`--config job.yaml`) and command-line flags both load into it; flags override the
file, the file overrides the defaults. Every field carries its help text, so the CLI, the YAML
reference and error messages all say the same thing. The model-loading and replica knobs are
the core's (`qwen3_embed.options`), under the same names as in the Serve config. Nothing here
imports Ray or torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from qwen3_embed.options import help_with_default, rename_deprecated
from qwen3_embed.precision import PRECISIONS, RANGED_PRECISIONS
from qwen3_embed_layers.config_base import LoadFields, ReadableConfig, ReplicaFields

INPUT_FORMATS = ("auto", "parquet", "jsonl", "csv", "txt", "images", "videos")
# Rows embedded before the main pass to find int8 / uint8 ranges (per-dimension min and max).
DEFAULT_CALIBRATION_ROWS = 1000
# A prepared image is up to ~5.5 MB of uint8 pixels (1.8 megapixels; normalised on the replica),
# so VL batches stay small.
DEFAULT_BATCH_ROWS = {"text": 256, "vl": 16}
# Rows per replica call when `batch_rows` is not set. Text rows are small (token ids), so a
# replica gets thousands at once and the core's planner, not the block size, shapes the forward
# passes: 4096 rows of a ~300-token corpus hold ~1.2M tokens, ~19 forwards of 64k packed tokens.
# A 256-row block would cap a forward at 256 rows whatever the token budget.
DEFAULT_EMBED_ROWS = {"text": 4096, "vl": 16}
_NAME = r"\S"  # a column name or instruction: not empty, not only blanks


class JobConfig(LoadFields, ReplicaFields, ReadableConfig):
    """An embedding job. Build it with `JobConfig(...)`, `JobConfig.from_mapping(dict)` or
    `JobConfig.from_yaml(path, **overrides)`; it validates itself on construction
    (`InvalidConfigError`, a ValueError, names every refused field)."""

    what = "job config"

    input: tuple[str, ...] = Field(
        description="what to embed: a file, a folder, a glob (`data/*.jsonl`, `**` crosses "
        "folders) or a list of them, on local disk or any pyarrow/fsspec URL (s3://, gs://, ...)"
    )
    output: str = Field(
        pattern=_NAME, description="folder (local or URL) that receives the parquet dataset"
    )
    dim: int | None = Field(
        None,
        ge=1,
        strict=True,
        description="output dimension (Matryoshka); default: the model's hidden size",
    )
    instruction: str | None = Field(
        None,
        description="embed every row as a query with this instruction; default: documents "
        "(no instruction)",
    )
    id_column: str | None = Field(
        None,
        min_length=1,
        description="column holding row ids; default: `id` when the input has such a column "
        "(judged by the first table file), else ids derived from file and row, "
        "`relative/path.jsonl:row`",
    )
    derived_ids: bool = Field(
        False,
        strict=True,
        description="ids derived from file and row (`relative/path.jsonl:row`) even when the "
        "input has an `id` column",
    )
    text_column: str = Field(
        "text", min_length=1, description="column (or JSON key) holding the text"
    )
    image_column: str = Field(
        "image",
        min_length=1,
        description="VL models: column holding an image (path relative to the table, URL, "
        "bytes, data URI)",
    )
    video_column: str = Field(
        "video",
        min_length=1,
        description="VL models: column holding a video (a file path relative to the table, a "
        "URL or the file's bytes) or a list of frame images; per-row `fps` and `max_frames` "
        "columns, when the input has them, apply to video files",
    )
    precision: Literal[PRECISIONS] = Field(  # type: ignore[valid-type]
        "float32",
        description=f"output precision, one of {', '.join(PRECISIONS)} (sentence-transformers' "
        "quantize_embeddings rules; int8/uint8 use ranges from a calibration sample or "
        "--calibration)",
    )
    calibration: str | None = Field(
        None,
        pattern=_NAME,
        description="int8/uint8: a JSON file with the ranges (a job's _manifest.json, or "
        "[[min per dim...], [max per dim...]]); default: computed from the first "
        "calibration_rows rows before the main pass",
    )
    calibration_rows: int = Field(
        DEFAULT_CALIBRATION_ROWS,
        ge=2,
        strict=True,
        description="int8/uint8 without --calibration: rows embedded first (in input order) "
        "whose per-dimension min and max become the ranges (with chunk_tokens: the chunks of "
        "the first calibration_rows documents)",
    )
    format: Literal[INPUT_FORMATS] = Field(  # type: ignore[valid-type]
        "auto",
        description=f"input format, one of {', '.join(INPUT_FORMATS)}; auto = from each "
        "file's extension",
    )
    batch_rows: int | None = Field(
        None,
        ge=1,
        strict=True,
        description="rows per prepare task batch and per replica call (the core re-batches "
        f"them by tokens); default {DEFAULT_BATCH_ROWS['text']} per prepare task and "
        f"{DEFAULT_EMBED_ROWS['text']} per replica call for text models, "
        f"{DEFAULT_BATCH_ROWS['vl']} for VL models, whose prepared images are large",
    )
    rows_per_file: int = Field(
        8192,
        ge=1,
        strict=True,
        description="rows per output file (at most; each write task gathers at least this many)",
    )
    truncate: bool = Field(
        True,
        strict=True,
        description="truncate over-long inputs to max_length (counted as rows_truncated in the "
        "manifest); off: they become error rows",
    )
    chunk_tokens: int | None = Field(
        None,
        ge=1,
        strict=True,
        description="split each text into chunks of at most N tokens as embedded (prompt and "
        "special tokens included; at most max_length), one output row per chunk with id "
        "`<doc id>#<chunk index>`, doc_id, chunk_index, char_start, char_end; text models; "
        "default: off (one row per document)",
    )
    chunk_overlap: int = Field(
        0,
        ge=0,
        strict=True,
        description="tokens neighbouring chunks share (with chunk_tokens)",
    )
    keep_columns: tuple[str, ...] = Field(
        (),
        description="input columns copied into each output row (every chunk of a document gets "
        "its document's values), Arrow types unchanged; comma-separated on the command line",
    )
    storage_options: tuple[tuple[str, Any], ...] = Field(
        (),
        description="options for non-local filesystems, e.g. endpoint_override, region, "
        "access_key, secret_key (pyarrow S3FileSystem / GcsFileSystem arguments, or fsspec "
        "arguments for other schemes)",
    )
    ray_address: str | None = Field(
        None,
        description="Ray cluster to attach to; default: $RAY_ADDRESS, else start a local one",
    )
    num_cpus: int | None = Field(
        None, ge=1, strict=True, description="CPUs of a local cluster started by the job"
    )
    progress: bool = Field(
        True,
        strict=True,
        description="show progress: Ray Data's bars on a terminal; otherwise (a file, CI, "
        "`ray job submit`) the job's own line every progress_interval_s",
    )
    ray_progress: bool = Field(
        False,
        strict=True,
        description="Ray Data's own progress output even when not on a terminal (its "
        "multi-line block every 10 s) instead of the job's line",
    )
    progress_interval_s: float = Field(
        30.0, gt=0, description="seconds between the job's progress lines (not on a terminal)"
    )

    # ------------------------------------------------------------------ validation
    @field_validator("input", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> tuple[str, ...]:
        # YAML and callers give one string or a list.
        inputs = (value,) if isinstance(value, str) else tuple(value or ())
        if not inputs or any(not isinstance(item, str) or not item.strip() for item in inputs):
            raise ValueError("input must name at least one file, folder or glob")
        return inputs

    @field_validator("storage_options", mode="before")
    @classmethod
    def _options(cls, value: Any) -> tuple[tuple[str, Any], ...]:
        return storage_option_pairs(value)

    @field_validator("keep_columns", mode="before")
    @classmethod
    def _keep_columns(cls, value: Any) -> tuple[str, ...]:
        return keep_column_names(value)

    @field_validator("instruction")
    @classmethod
    def _instruction(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("instruction must be a non-empty string (leave it out for documents)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> JobConfig:
        if self.cpus_per_replica == 0 and not self.gpus_per_replica:
            raise ValueError(
                f"cpus_per_replica must be a number > 0 (or 0 with GPUs), got {self.cpus_per_replica!r}"
            )
        if self.derived_ids and self.id_column is not None:
            raise ValueError("give id_column or derived_ids, not both")
        if self.calibration is not None and self.precision not in RANGED_PRECISIONS:
            raise ValueError(
                f"calibration gives int8/uint8 ranges; precision {self.precision!r} takes none"
            )
        if self.chunk_tokens is None and self.chunk_overlap:
            raise ValueError("chunk_overlap needs chunk_tokens")
        if self.chunk_tokens is not None and self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(
                f"chunk_overlap={self.chunk_overlap} must be smaller than "
                f"chunk_tokens={self.chunk_tokens}"
            )
        return self

    @property
    def chunking(self) -> dict[str, int] | None:
        """The chunking settings (part of the job's identity), or None when off."""
        if self.chunk_tokens is None:
            return None
        return {"chunk_tokens": self.chunk_tokens, "chunk_overlap": self.chunk_overlap}

    # ------------------------------------------------------------------- loading
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(cls.model_fields)

    @classmethod
    def field_help(cls, name: str) -> str:
        """The field's description, with its default when it has a plain one."""
        item = cls.model_fields[name]
        return help_with_default(
            item.description or "", None if item.is_required() else item.default
        )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **overrides: Any) -> JobConfig:
        """Build from a YAML-style mapping; `overrides` (e.g. CLI flags) win. Unknown keys are an
        error that lists the valid ones, so a typo never silently falls back to a default."""
        merged = {
            **rename_deprecated(values, "job config"),
            **rename_deprecated(
                {key: value for key, value in overrides.items() if value is not None}, "job config"
            ),
        }
        unknown = sorted(set(merged) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"unknown job config key(s) {unknown}; valid keys are: {', '.join(cls.field_names())}"
            )
        missing = [
            name for name in ("input", "output", "model") if merged.get(name) in (None, "", [], ())
        ]
        if missing:
            raise ValueError(
                f"job config is missing {', '.join(missing)} (give them as arguments or in the YAML file)"
            )
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> JobConfig:
        import yaml

        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        if not isinstance(values, Mapping):
            raise ValueError(f"{path}: a job config file must hold a mapping of field: value")
        return cls.from_mapping(values, **overrides)

    # ------------------------------------------------------------------ views
    @property
    def storage_options_dict(self) -> dict[str, Any]:
        return dict(self.storage_options)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, for the manifest (secrets in storage options are masked)."""
        values = self.model_dump()
        values["input"] = list(self.input)
        values["keep_columns"] = list(self.keep_columns)
        values["storage_options"] = {
            key: (
                "***"
                if any(word in key.lower() for word in ("secret", "key", "token", "password"))
                else value
            )
            for key, value in self.storage_options
        }
        return values


def storage_option_pairs(value: Any) -> tuple[tuple[str, Any], ...]:
    """Storage options as sorted (key, value) pairs: hashable, so a config stays frozen; YAML
    and callers give a mapping."""
    pairs = sorted(value.items()) if isinstance(value, Mapping) else tuple(value or ())
    return tuple((str(key), option) for key, option in pairs)


def keep_column_names(value: Any) -> tuple[str, ...]:
    """`keep_columns` as a tuple of names: YAML gives a list, the command line `a,b,c`. A name
    given twice, or an empty one, is refused."""
    if value is None:
        return ()
    names = value.split(",") if isinstance(value, str) else list(value)
    if any(not isinstance(name, str) or not name.strip() for name in names):
        raise ValueError(f"keep_columns must be column names, got {value!r}")
    names = [name.strip() for name in names]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"keep_columns names {repeated} more than once")
    return tuple(names)
