"""`RerankJobConfig`: the one typed, validated description of a rerank job (`qwen3-embed rerank`).
The model-loading and replica knobs are the core's, under the same names as in `JobConfig`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from qwen3_embed_layers.config_base import LoadFields, ReadableConfig, ReplicaFields

from .config import storage_option_pairs
from .rerank_stage import DEFAULT_GROUPS_PER_CALL

TABLE_FORMATS = ("auto", "parquet", "jsonl", "csv")


class RerankJobConfig(LoadFields, ReplicaFields, ReadableConfig):
    """A rerank job; validated on construction (`InvalidConfigError` names each refused field)."""

    what = "rerank job config"

    input: tuple[str, ...] = Field(
        description="table files (parquet, jsonl, csv), folders or globs, local or URLs"
    )
    output: str = Field(pattern=r"\S", description="folder that receives the parquet dataset")
    query_column: str = Field(
        "query",
        min_length=1,
        description="column holding the query: a text, or (VL) an item object with text, image, "
        "video, fps, max_frames (see docs/rerank.md)",
    )
    document_column: str = Field(
        "document",
        min_length=1,
        description="column holding the candidate: one text or item per row (a (query, document) "
        "pair), or a list of them per row (a query and its candidates)",
    )
    query_id_column: str | None = Field(
        None,
        min_length=1,
        description="column holding query ids; default `query_id` when the input has it, else "
        "ids derived from the query (and, for list rows, its candidates)",
    )
    document_id_column: str | None = Field(
        None,
        min_length=1,
        description="column holding document ids (for list rows: a list beside the candidates); "
        "default `document_id` (or `doc_id`) when the input has it, else the candidate's "
        "position in its list (list rows) or an id derived from the document (pairs)",
    )
    instruction: str | None = Field(
        None, description="the reranker's task instruction; default: the model's own"
    )
    top_n: int | None = Field(
        None, ge=1, strict=True, description="write only the best N documents of each query"
    )
    truncate: bool = Field(
        True,
        strict=True,
        description="truncate over-long pairs (the official rule); off: error rows",
    )
    format: Literal[TABLE_FORMATS] = Field(  # type: ignore[valid-type]
        "auto", description="input format: auto (from each file's extension), parquet, jsonl, csv"
    )
    batch_rows: int | None = Field(
        None,
        ge=1,
        strict=True,
        description=f"queries per replica call (default {DEFAULT_GROUPS_PER_CALL})",
    )
    rows_per_file: int = Field(
        1024,
        ge=1,
        strict=True,
        description="queries per output file (at least; see docs/rerank.md)",
    )
    storage_options: tuple[tuple[str, Any], ...] = Field(
        (),
        description="options for non-local filesystems, inputs and items' media alike (as for "
        "`qwen3-embed embed`)",
    )
    ray_address: str | None = Field(None, description="Ray cluster to attach to")
    num_cpus: int | None = Field(None, ge=1, strict=True, description="CPUs of a local cluster")
    progress: bool = Field(True, strict=True, description="show Ray Data's progress bars")

    @field_validator("input", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> tuple[str, ...]:
        inputs = (value,) if isinstance(value, str) else tuple(value or ())
        if not inputs or any(not isinstance(item, str) or not item.strip() for item in inputs):
            raise ValueError("input must name at least one file, folder or glob")
        return inputs

    @field_validator("storage_options", mode="before")
    @classmethod
    def _options(cls, value: Any) -> tuple[tuple[str, Any], ...]:
        return storage_option_pairs(value)

    def to_dict(self) -> dict[str, Any]:
        values = self.model_dump()
        values["input"] = list(self.input)
        values["storage_options"] = {
            key: "***"
            if any(w in key.lower() for w in ("secret", "key", "token", "password"))
            else v
            for key, v in self.storage_options
        }
        return values
