"""What makes a rerun over OUTPUT "the same job", decided in one place.

Both the CLI's cheap first look (`noop`, before Ray, torch or the tokenizer are imported) and
the full checks (`job.plan_job`, `run_embedding_job`) call these functions, so the two can never
disagree on what the job is:

- `model_path`: the model as the job names it (a local folder made absolute);
- `ModelFacts`: what the checkpoint says (family, output dim, normalisation), read from its
  config files alone;
- `job_identity`: what makes two jobs' vectors comparable; a non-empty OUTPUT must match it
  (`resume.check_output` refuses another job with `identity_differences`);
- `rerun_id_column` / `previous_id_column`: which ids a rerun uses;
- `read_settings` / `job_input_fingerprint`: the inputs as a rerun must find them unchanged
  for "nothing to do" (`resume.nothing_to_do`).

The rerank job has an identity of its own (query and document columns, top_n, no dim or
precision) and shares `model_path` and `identity_differences`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qwen3_embed.model_info import ModelInfo

    from .config import JobConfig
    from .discovery import InputSet

# How a job's ids were chosen (the manifest's `ids.source`).
ID_GIVEN, ID_DEFAULT, ID_DERIVED, ID_KEPT = "given", "default", "derived", "kept"

# An OUTPUT from before `precision` existed holds float32 vectors.
IDENTITY_DEFAULTS: dict[str, Any] = {"precision": "float32"}


def model_path(model: str) -> str:
    """The model as the job names it everywhere (workers, manifest, identity): a local folder
    made absolute (workers have other working directories), anything else as given."""
    return os.path.abspath(model) if os.path.isdir(model) else model


@dataclass(frozen=True)
class ModelFacts:
    """What the checkpoint says that the job's identity needs."""

    model: str  # `model_path(config.model)`
    family: str
    dim: int  # the output dim: the job's, or the model's full size
    normalized: bool

    @classmethod
    def of(cls, model: str, info: ModelInfo, dim: int | None) -> ModelFacts:
        """From the checkpoint's `ModelInfo`; `dim` is checked by the core's MRL rule."""
        return cls(model, info.family, info.output_dim(dim), info.normalize)

    @classmethod
    def read(cls, config: JobConfig) -> ModelFacts:
        """From the checkpoint's config files alone (no tokenizer, no torch), and only from what
        is already on this machine: a hub id from the hub's cache, a URL from this project's
        cache (FileNotFoundError when it is not there; nothing is downloaded)."""
        from qwen3_embed.model_info import read_model_info
        from qwen3_embed.registry import lookup
        from qwen3_embed.source import resolve_model_dir

        model = model_path(config.model)
        model_dir = resolve_model_dir(model, config.revision, local_only=True)
        return cls.of(model, read_model_info(model_dir, lookup(model)), config.dim)


def job_identity(config: JobConfig, facts: ModelFacts) -> dict[str, Any]:
    """What makes two embedding jobs' vectors comparable; a non-empty OUTPUT must match it.
    (int8 / uint8 ranges are compared apart, by `job._choose_precision`: they may come from a
    calibration sample only the run computes.)"""
    return {
        "model": facts.model,
        "dim": facts.dim,
        "instruction": config.instruction,
        "normalized": facts.normalized,
        "precision": config.precision,
        "chunking": config.chunking,
        "keep_columns": list(config.keep_columns) or None,
    }


def identity_differences(
    existing: dict[str, Any], identity: dict[str, Any], defaults: dict[str, Any] | None = None
) -> list[str]:
    """`key old (this job: new)` for each key of `identity` whose value in `existing` (OUTPUT's)
    differs; `defaults` fill keys that older manifests lack."""
    existing = {**(defaults or {}), **existing}
    return [
        f"{key} {existing.get(key)!r} (this job: {value!r})"
        for key, value in identity.items()
        if existing.get(key) != value
    ]


def previous_id_column(manifest: dict[str, Any]) -> str | None:
    """The id column (None: derived ids) of the run that wrote `manifest`; manifests from before
    the `id` default have no `ids` and used `config.id_column` as given."""
    ids = manifest.get("ids")
    if isinstance(ids, dict):
        return ids.get("column")
    config = manifest.get("config")
    return config.get("id_column") if isinstance(config, dict) else None


def rerun_id_column(
    config: JobConfig, previous: dict[str, Any] | None
) -> tuple[str | None, str] | None:
    """(id column or None for derived ids, how it was chosen), when the config or OUTPUT's
    manifest decides it; None when a new OUTPUT leaves it to the inputs (`job._choose_ids`).
    Without `--id-column`, a job resuming an OUTPUT keeps the ids OUTPUT was started with
    (other ids would embed every row again, twice in OUTPUT)."""
    if config.derived_ids:
        return None, ID_DERIVED
    if config.id_column is not None:
        return config.id_column, ID_GIVEN
    if previous is not None:
        return previous_id_column(previous), ID_KEPT
    return None


def read_settings(
    config: JobConfig, root: str, family: str, id_column: str | None = None
) -> dict[str, Any]:
    """What decides the row ids, besides the files themselves (see `input_fingerprint`);
    `id_column` is the one the job uses (`config.id_column`, or the default it chose)."""
    settings = {
        "root": root,
        "id_column": id_column,
        "text_column": config.text_column,
        "image_column": config.image_column if family == "vl" else None,
    }
    if family == "vl":  # the rows' videos (a key only for VL, so text jobs keep their keys)
        settings["video_column"] = config.video_column
    return settings


def job_input_fingerprint(
    config: JobConfig, inputs: InputSet, family: str, id_column: str | None
) -> str | None:
    """The inputs' fingerprint as `_manifest.json` records it (`inputs.fingerprint`)."""
    from .resume import input_fingerprint  # resume imports this module

    root = inputs.prefix + inputs.root
    return input_fingerprint(inputs.files, read_settings(config, root, family, id_column))
