"""A rerun with nothing left to do, recognised before Ray, torch or the tokenizer are imported.

`run_embedding_job` recognises it too (after its checks, before touching a cluster); this is the
CLI's cheaper first look, from OUTPUT's manifest and two listings: the last run over OUTPUT
completed with every input row in it, for the same model, dim and instruction (so the same
identity: the full checks passed then and would pass again), and neither the inputs nor OUTPUT's
files changed since. Anything else returns None and the job is planned and run as usual.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from .config import JobConfig
from .discovery import discover
from .manifest import JobResult, nothing_to_do_manifest, write_manifest
from .resume import check_output, input_fingerprint, nothing_to_do, read_manifest
from .storage import resolve


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


def previous_id_column(manifest: dict[str, Any]) -> str | None:
    """The id column (None: derived ids) of the run that wrote `manifest`; manifests from before
    the `id` default have no `ids` and used `config.id_column` as given."""
    if "ids" in manifest:
        return manifest["ids"].get("column")
    return manifest.get("config", {}).get("id_column")


def _id_column(config: JobConfig, previous: dict[str, Any]) -> str | None:
    """The id column a rerun of `config` over OUTPUT uses (see `job._choose_ids`)."""
    if config.derived_ids:
        return None
    return config.id_column if config.id_column is not None else previous_id_column(previous)


def finish_if_nothing_to_do(config: JobConfig, phases: dict[str, float]) -> JobResult | None:
    """The no-op run's result (its manifest written) when there is nothing to do, else None.
    Raises nothing of its own: any doubt (no manifest, another model, a listing error) is None."""
    from qwen3_embed import __version__

    started = time.monotonic()
    try:
        storage = config.storage_options_dict
        output = resolve(config.output, storage)
        previous = read_manifest(output)
        if not previous or previous.get("status") != "complete":
            return None
        model = os.path.abspath(config.model) if os.path.isdir(config.model) else config.model
        identity = previous.get("identity") or {}
        same_job = (
            identity.get("model") == model
            and previous.get("config", {}).get("dim") == config.dim
            and identity.get("instruction") == config.instruction
            and identity.get("precision", "float32") == config.precision
            # ranges from a file are checked against OUTPUT's by the full checks
            and config.calibration is None
            and identity.get("chunking") == config.chunking
            and identity.get("keep_columns") == (list(config.keep_columns) or None)
        )
        if not same_job:
            return None
        inputs = discover(config.input, config.format, storage)
        fingerprint = input_fingerprint(
            inputs.files,
            read_settings(
                config,
                inputs.prefix + inputs.root,
                previous.get("family", ""),
                id_column=_id_column(config, previous),
            ),
        )
        if not nothing_to_do(previous, fingerprint, output):
            return None
        check_output(output, identity)  # files that are not ours: the full checks refuse them
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the full checks decide, and report what is wrong
    phases = {**phases, "plan": time.monotonic() - started}
    common = {
        "run_id": uuid.uuid4().hex,
        "config": config.to_dict(),
        "producer": f"qwen3-embed {__version__}",
        "started_at": datetime.fromtimestamp(
            time.time() - sum(phases.values()), timezone.utc
        ).isoformat(timespec="seconds"),
    }
    manifest = nothing_to_do_manifest(
        previous,
        common,
        sum(phases.values()),
        {name: round(seconds, 3) for name, seconds in phases.items()},
    )
    write_manifest(output, manifest)
    return JobResult.from_manifest(manifest)
