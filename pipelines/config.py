"""`JobConfig`: the one typed, immutable, validated description of an embedding job.

YAML files (`--config job.yaml`) and command-line flags both load into it; flags override the
file, the file overrides the defaults. Every field carries its help text, so the CLI, the YAML
reference and error messages all say the same thing. Nothing here imports Ray or torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INPUT_FORMATS = ("auto", "parquet", "jsonl", "csv", "txt", "images")
# A prepared image is up to ~5.5 MB of uint8 pixels (1.8 megapixels; normalised on the replica),
# so VL batches stay small.
DEFAULT_BATCH_ROWS = {"text": 256, "vl": 16}
# Rows per replica call when `batch_rows` is not set. Text rows are small (token ids), so a
# replica gets thousands at once and the core's planner, not the block size, shapes the forward
# passes: 4096 rows of a ~300-token corpus hold ~1.2M tokens, ~19 forwards of 64k packed tokens.
# A 256-row block would cap a forward at 256 rows whatever the token budget.
DEFAULT_EMBED_ROWS = {"text": 4096, "vl": 16}
FORWARD_MODES = ("auto", "padded", "packed")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class JobConfig:
    """An embedding job. Build it with `JobConfig(...)`, `JobConfig.from_mapping(dict)` or
    `JobConfig.from_yaml(path, **overrides)`; it validates itself on construction."""

    input: tuple[str, ...] = field(
        metadata=_help(
            "what to embed: a file, a folder, a glob (`data/*.jsonl`, `**` crosses folders) or a "
            "list of them, on local disk or any pyarrow/fsspec URL (s3://, gs://, ...)"
        )
    )
    output: str = field(metadata=_help("folder (local or URL) that receives the parquet dataset"))
    model: str = field(
        metadata=_help("required: hub id, local checkpoint folder, or fsspec URL of one")
    )
    dim: int | None = field(
        default=None,
        metadata=_help("output dimension (Matryoshka); default: the model's hidden size"),
    )
    instruction: str | None = field(
        default=None,
        metadata=_help(
            "embed every row as a query with this instruction; default: documents (no instruction)"
        ),
    )
    id_column: str | None = field(
        default=None,
        metadata=_help(
            "column holding row ids; default: `id` when the input has such a column (judged by "
            "the first table file), else ids derived from file and row, `relative/path.jsonl:row`"
        ),
    )
    derived_ids: bool = field(
        default=False,
        metadata=_help(
            "ids derived from file and row (`relative/path.jsonl:row`) even when the input has "
            "an `id` column"
        ),
    )
    text_column: str = field(
        default="text", metadata=_help("column (or JSON key) holding the text")
    )
    image_column: str = field(
        default="image",
        metadata=_help(
            "VL models: column holding an image (path relative to the table, URL, bytes, data URI)"
        ),
    )
    format: str = field(
        default="auto",
        metadata=_help(
            f"input format, one of {', '.join(INPUT_FORMATS)}; auto = from each file's extension"
        ),
    )
    replicas: int = field(
        default=1, metadata=_help("model replicas (Ray actors) embedding in parallel")
    )
    gpus_per_replica: float | None = field(
        default=None,
        metadata=_help("GPUs per replica; default: 1 when the cluster has GPUs, else 0 (CPU)"),
    )
    cpus_per_replica: float = field(default=1.0, metadata=_help("CPUs reserved per replica"))
    batch_tokens: int | None = field(
        default=None,
        metadata=_help(
            "tokens per forward pass, padding included when padded (the core's max_batch_tokens); "
            "default: 65536 when packed on a GPU, else 16384"
        ),
    )
    forward_mode: str = field(
        default="auto",
        metadata=_help(
            "batch layout of the forward passes: packed (padding-free, Qwen3 text), padded, or "
            "auto = packed for Qwen3 text on a GPU, else padded"
        ),
    )
    compile: bool = field(
        default=False,
        metadata=_help("run the backbone through torch.compile (slower start, faster forwards)"),
    )
    batch_rows: int | None = field(
        default=None,
        metadata=_help(
            "rows per prepare task batch and per replica call (the core re-batches them by tokens); "
            f"default {DEFAULT_BATCH_ROWS['text']} per prepare task and {DEFAULT_EMBED_ROWS['text']} "
            f"per replica call for text models, {DEFAULT_BATCH_ROWS['vl']} for VL models, "
            "whose prepared images are large"
        ),
    )
    rows_per_file: int = field(
        default=8192,
        metadata=_help(
            "rows per output file (at most; each write task gathers at least this many)"
        ),
    )
    truncate: bool = field(
        default=True,
        metadata=_help("truncate over-long inputs to max_length; off: they become error rows"),
    )
    max_length: int | None = field(
        default=None, metadata=_help("token limit per input; default: the model's")
    )
    dtype: str = field(
        default="auto",
        metadata=_help(
            "compute dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16"
        ),
    )
    device: str = field(
        default="auto", metadata=_help("device inside each replica: auto, cpu, cuda")
    )
    storage_options: tuple[tuple[str, Any], ...] = field(
        default=(),
        metadata=_help(
            "options for non-local filesystems, e.g. endpoint_override, region, access_key, secret_key "
            "(pyarrow S3FileSystem / GcsFileSystem arguments, or fsspec arguments for other schemes)"
        ),
    )
    ray_address: str | None = field(
        default=None,
        metadata=_help("Ray cluster to attach to; default: $RAY_ADDRESS, else start a local one"),
    )
    num_cpus: int | None = field(
        default=None, metadata=_help("CPUs of a local cluster started by the job")
    )
    progress: bool = field(default=True, metadata=_help("show Ray Data's progress bars"))

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        # Normalise the forms YAML and callers naturally use, then validate once.
        inputs = (self.input,) if isinstance(self.input, str) else tuple(self.input or ())
        object.__setattr__(self, "input", tuple(str(item) for item in inputs))
        options = self.storage_options
        if isinstance(options, Mapping):
            options = tuple(sorted(options.items()))
        object.__setattr__(self, "storage_options", tuple((str(k), v) for k, v in options))
        errors = list(self._problems())
        if errors:
            raise ValueError("invalid job config: " + "; ".join(errors))

    def _problems(self):
        if not self.input or any(not item.strip() for item in self.input):
            yield "input must name at least one file, folder or glob"
        for name in ("output", "model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                yield f"{name} must be a non-empty string"
        if self.dim is not None and (
            isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1
        ):
            yield f"dim must be a positive integer, got {self.dim!r}"
        if self.instruction is not None and (
            not isinstance(self.instruction, str) or not self.instruction.strip()
        ):
            yield "instruction must be a non-empty string (leave it out for documents)"
        for name in ("id_column", "text_column", "image_column"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                yield f"{name} must be a non-empty string"
        if self.format not in INPUT_FORMATS:
            yield f"format={self.format!r} is invalid; valid values are: {', '.join(INPUT_FORMATS)}"
        for name in ("replicas", "rows_per_file"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                yield f"{name} must be an integer >= 1, got {value!r}"
        for name in ("batch_tokens", "batch_rows", "max_length", "num_cpus"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                yield f"{name} must be an integer >= 1, got {value!r}"
        if self.gpus_per_replica is not None and not _is_number(self.gpus_per_replica, minimum=0):
            yield f"gpus_per_replica must be a number >= 0, got {self.gpus_per_replica!r}"
        if (
            not _is_number(self.cpus_per_replica, minimum=0)
            or self.cpus_per_replica == 0
            and not self.gpus_per_replica
        ):
            yield f"cpus_per_replica must be a number > 0 (or 0 with GPUs), got {self.cpus_per_replica!r}"
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            yield f"dtype={self.dtype!r} is invalid; valid values are: auto, float32, bfloat16, float16"
        if not isinstance(self.device, str) or not self.device:
            yield "device must be a string such as auto, cpu, cuda, cuda:0"
        if self.forward_mode not in FORWARD_MODES:
            yield (
                f"forward_mode={self.forward_mode!r} is invalid; valid values are: "
                f"{', '.join(FORWARD_MODES)}"
            )
        if self.derived_ids is True and self.id_column is not None:
            yield "give id_column or derived_ids, not both"
        for name in ("truncate", "progress", "compile", "derived_ids"):
            if not isinstance(getattr(self, name), bool):
                yield f"{name} must be true or false"

    # ------------------------------------------------------------------- loading
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(item.name for item in dataclasses.fields(cls))

    @classmethod
    def field_help(cls, name: str) -> str:
        """The field's description, with its default when it has a plain one."""
        item = {item.name: item for item in dataclasses.fields(cls)}[name]
        text = item.metadata.get("help", "")
        if item.default not in (dataclasses.MISSING, None, ()):
            text += f" (default: {str(item.default).lower() if isinstance(item.default, bool) else item.default})"
        return text

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **overrides: Any) -> JobConfig:
        """Build from a YAML-style mapping; `overrides` (e.g. CLI flags) win. Unknown keys are an
        error that lists the valid ones, so a typo never silently falls back to a default."""
        merged = {
            **dict(values),
            **{key: value for key, value in overrides.items() if value is not None},
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
        values = dataclasses.asdict(self)
        values["input"] = list(self.input)
        values["storage_options"] = {
            key: (
                "***"
                if any(word in key.lower() for word in ("secret", "key", "token", "password"))
                else value
            )
            for key, value in self.storage_options
        }
        return values


def _is_number(value: Any, minimum: float) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value >= minimum
