"""`run_embedding_job`: the whole batch job, from a `JobConfig` to a `JobResult`.

    read (Ray Data source, CPU) -> prepare (CPU tasks: the core's Preparer)
        -> embed (actor pool: one Embedder per replica, a GPU each when there are GPUs)
        -> write (atomic parquet files + error files) -> count OUTPUT -> _manifest.json

Everything streams: Ray Data's backpressure bounds what is in flight, the driver only plans,
and counts come back as a few numbers per write task plus one scan of OUTPUT's id column.
Everything that can be checked without a cluster (inputs exist, model and dim are valid, OUTPUT
belongs to this job) is checked first; a rerun that finds every input row already in OUTPUT
(`resume.nothing_to_do`) stops there. The replicas report to a per-run ledger actor (`ledger`)
that bounds replica deaths per batch and times their start-up for the summary's phases.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import ray
from ray.data import DataContext, read_datasource

from qwen3_embed.chunking import check_settings
from qwen3_embed.precision import (
    RANGED_PRECISIONS,
    PrecisionSpec,
    calibration_ranges,
    ranges_from_file,
)

from .carried import kept_fields
from .config import DEFAULT_BATCH_ROWS, DEFAULT_EMBED_ROWS, JobConfig
from .dataset_stage import gpus_per_replica
from .datasource import CorpusDatasource
from .discovery import InputSet, discover
from .fragments import fragment_key, read_groups
from .identity import (
    ID_DEFAULT,
    ID_DERIVED,
    ModelFacts,
    job_identity,
    job_input_fingerprint,
    model_path,
    read_settings,
    rerun_id_column,
)
from .layout import ERRORS_DIR, TMP_DIR, schema_metadata
from .ledger import start_ledger
from .manifest import (
    JobResult,
    common_block,
    finished_manifest,
    nothing_to_do_manifest,
    write_manifest,
)
from .map_stages import MapStage, StageResources, apply_stages, embed_stage, prepare_stage
from .owner import Heartbeat, OutputBusyError, live_writer, writer_record
from .progress import ProgressReporter, estimate_rows
from .readers import DEFAULT_ID_COLUMN, ReadSpec, has_column
from .resume import (
    check_output,
    nothing_to_do,
    output_fingerprint,
    part_files,
    read_manifest,
    scan_for_resume,
    scan_output,
)
from .sink import EmbeddingSink, SinkSettings, WriteTally
from .stages import EmbedSettings, EmbedWorker, PrepareSettings, prepare_batch
from .storage import ATOMIC_PUT_FILESYSTEMS, Location, read_bytes, resolve

logger = logging.getLogger(__name__)

# Failures around the forward (replica deaths, raising blocks, OOM): the layers and their bounds
# are `failure_layers`; this job starts the run's ledger, their crash bound, and kills it at the end.


@dataclass(frozen=True)
class JobPlan:
    """Everything checked before a cluster is touched."""

    config: JobConfig
    model: str  # config.model, made absolute when it is a local folder (workers have other cwds)
    inputs: InputSet
    output: Location
    family: str
    dim: int
    normalized: bool
    previous: dict[str, Any] | None = None  # OUTPUT's manifest when the job started, if any
    # The ids: a column (`config.id_column`, or `id` found in the input), or None (derived from
    # file and row); `id_source` says how it was chosen, for the summary and the manifest.
    id_column: str | None = None
    id_source: str = ID_DERIVED
    # The output precision with its int8 / uint8 ranges; ranges None for those two means they
    # are computed from a calibration sample when the job runs (`calibrate`).
    precision: PrecisionSpec = PrecisionSpec()
    calibration_source: str | None = None  # where the ranges came from (file, resumed, sample)

    @property
    def needs_calibration(self) -> bool:
        return self.precision.name in RANGED_PRECISIONS and self.precision.ranges is None

    # Carried columns (`keep_columns`) with their input Arrow types (see `carried`).
    kept: tuple[tuple[str, Any], ...] = ()

    @property
    def batch_rows(self) -> int:
        return self.config.batch_rows or DEFAULT_BATCH_ROWS[self.family]

    @property
    def embed_rows(self) -> int:
        """Rows per replica call: `batch_rows` when set, else large text blocks (see config)."""
        return self.config.batch_rows or DEFAULT_EMBED_ROWS[self.family]

    @property
    def identity(self) -> dict[str, Any]:
        """What makes two jobs' vectors comparable; a non-empty OUTPUT must match it (one
        definition for this and the CLI's first look, `noop`: `identity.job_identity`)."""
        facts = ModelFacts(self.model, self.family, self.dim, self.normalized)
        return job_identity(self.config, facts)


def plan_job(config: JobConfig) -> JobPlan:
    """Check the job without a cluster: the inputs exist and fit the model, the dim is valid for
    it, and OUTPUT is empty or belongs to this same job. Raises ValueError / FileNotFoundError."""
    from qwen3_embed import Preparer

    if config.num_cpus is not None and ray.is_initialized():
        raise ValueError(
            "num_cpus sizes a local cluster started by the job; Ray is already initialised in this process"
        )
    if config.num_cpus is not None and (config.ray_address or os.environ.get("RAY_ADDRESS")):
        raise ValueError(
            "num_cpus sizes a local cluster started by the job; it cannot apply when attaching to one"
        )
    storage = config.storage_options_dict
    inputs = discover(config.input, config.format, storage)
    model = model_path(config.model)
    preparer = Preparer.from_pretrained(model, config.max_length, config.revision)  # no weights
    info = preparer.info
    # The core's dim rule, checked without loading weights; the facts the first look reads too.
    facts = ModelFacts.of(model, info, config.dim)
    dim = facts.dim
    _check_inputs_fit(inputs, info.family, config)
    if config.chunk_tokens is not None:  # the core's rule too: a text model, room for text
        check_settings(preparer, config.chunk_tokens, config.chunk_overlap, config.instruction)
    kept = kept_fields(inputs, config.keep_columns)
    output = resolve(config.output, storage)
    for folder in inputs.listed_folders:
        if output.prefix == inputs.prefix and (output.path + "/").startswith(
            folder.rstrip("/") + "/"
        ):
            raise ValueError(
                f"OUTPUT {output.uri()} lies inside the input folder {inputs.prefix}{folder}: a rerun would read "
                "the vectors back as input; put OUTPUT elsewhere"
            )
    plan = JobPlan(config, model, inputs, output, facts.family, dim, facts.normalized, kept=kept)
    previous = check_output(output, plan.identity)
    busy = live_writer(previous)
    if busy is not None:
        raise OutputBusyError(f"OUTPUT {output.uri()} is in use: {busy}; wait for it or stop it")
    id_column, id_source = _choose_ids(config, inputs, previous)
    precision, source = _choose_precision(config, dim, output, previous)
    _check_columns(inputs, id_column, config.text_column if info.family == "text" else None)
    _check_writable(output)  # last: nothing after it refuses, so no probe folder is left behind
    return dataclasses.replace(
        plan,
        previous=previous,
        id_column=id_column,
        id_source=id_source,
        precision=precision,
        calibration_source=source,
    )


def _choose_precision(
    config: JobConfig, dim: int, output: Location, previous: dict[str, Any] | None
) -> tuple[PrecisionSpec, str | None]:
    """The output precision and, for int8 / uint8, the ranges known before the run: those of
    `--calibration FILE`, else those OUTPUT was started with (a rerun quantises as the first
    run did). Ranges that differ from OUTPUT's are refused like another model."""
    from .resume import OutputMismatchError

    if config.precision not in RANGED_PRECISIONS:
        return PrecisionSpec.of(config.precision), None
    kept = None
    if previous is not None and isinstance(previous.get("precision"), dict):
        kept = previous["precision"].get("ranges")
    given = None
    if config.calibration is not None:
        location = resolve(config.calibration, config.storage_options_dict)
        try:
            data = json.loads(read_bytes(location))
        except ValueError as error:
            raise ValueError(f"--calibration {config.calibration}: not JSON: {error}") from None
        try:
            given = ranges_from_file(data, config.precision, dim)
        except ValueError as error:
            raise ValueError(f"--calibration {config.calibration}: {error}") from None
    if (
        given is not None
        and kept is not None
        and not np.array_equal(given, np.asarray(kept, dtype=np.float32))
    ):
        raise OutputMismatchError(
            f"OUTPUT {output.uri()} already holds {config.precision} vectors quantised with "
            f"other ranges than those of {config.calibration}; use a new OUTPUT folder, or "
            "leave --calibration out to resume with OUTPUT's ranges"
        )
    if given is not None:
        return PrecisionSpec.of(config.precision, given), f"file {config.calibration}"
    if kept is not None:
        return PrecisionSpec.of(config.precision, kept), "kept from OUTPUT's manifest"
    return PrecisionSpec.of(config.precision), None


# Table files whose columns are checked before the job starts (a footer or a first line each);
# a later file without them still fails the job, from its read task.
COLUMN_CHECK_FILES = 16


def _check_columns(inputs: InputSet, id_column: str | None, text_column: str | None) -> None:
    """The id column (and a text model's text column) exist in the first table files."""
    wanted = [name for name in (id_column, text_column) if name is not None]
    tables = [file for file in inputs.files if file.format in ("parquet", "jsonl", "csv")]
    for file in tables[:COLUMN_CHECK_FILES]:
        for name in wanted:
            if has_column(file, inputs.fs, name) is False:
                what = "id" if name == id_column else "text"
                flag = "--id-column NAME or --derived-ids" if what == "id" else "--text-column NAME"
                raise ValueError(
                    f"{file.relpath} has no {what} column {name!r}; name the right one with {flag}"
                )


def _check_writable(output: Location) -> None:
    """Write and delete a probe file under OUTPUT, so a read-only OUTPUT is refused before a
    cluster starts, not after the first batch. Filesystems with folders only: on an object
    store, deleting the probe would leave a folder marker behind in OUTPUT (pyarrow's S3), so
    a bucket that refuses writes still fails the job at its first write."""
    if output.fs.type_name in ATOMIC_PUT_FILESYSTEMS:
        return
    probe_dir = output.child(TMP_DIR)
    created = output.fs.get_file_info(probe_dir.path).type == pafs.FileType.NotFound
    probe = probe_dir.child(f".write-check-{uuid.uuid4().hex}")
    try:
        output.fs.create_dir(probe_dir.path, recursive=True)
        with output.fs.open_output_stream(probe.path) as stream:
            stream.write(b"")
        output.fs.delete_file(probe.path)
        if created:
            output.fs.delete_dir(probe_dir.path)
    except OSError as error:
        raise ValueError(f"OUTPUT {output.uri()} is not writable: {error}") from None


def _choose_ids(
    config: JobConfig, inputs: InputSet, previous: dict[str, Any] | None
) -> tuple[str | None, str]:
    """(id column or None for derived ids, how it was chosen): as `identity.rerun_id_column`
    says (the flags, else the ids OUTPUT was started with); a new OUTPUT takes `id` when the
    first table file has it."""
    chosen = rerun_id_column(config, previous)
    if chosen is not None:
        return chosen
    if {"txt", "images", "videos"} & set(inputs.formats()):
        return None, ID_DERIVED  # such files have no columns: every id is derived
    for file in inputs.files[:3]:  # the first that can tell (one may be empty or unreadable)
        found = has_column(file, inputs.fs, DEFAULT_ID_COLUMN)
        if found is not None:
            return (DEFAULT_ID_COLUMN, ID_DEFAULT) if found else (None, ID_DERIVED)
    return None, ID_DERIVED


def _input_fingerprint(plan: JobPlan) -> str | None:
    return job_input_fingerprint(plan.config, plan.inputs, plan.family, plan.id_column)


def nothing_left(plan: JobPlan) -> bool:
    """The full path's "nothing to do" (the CLI's first look, `noop`, decides it the same way):
    OUTPUT's last run completed with every input row, and neither the inputs nor OUTPUT's files
    changed since; `plan_job` has checked the identity."""
    return plan.previous is not None and nothing_to_do(
        plan.previous, _input_fingerprint(plan), plan.output
    )


def run_embedding_job(
    config: JobConfig | JobPlan, phases: dict[str, float] | None = None
) -> JobResult:
    """Run (or resume) the job and return its result. Attaches to the running Ray cluster
    (`ray.init` already called, `config.ray_address` or `$RAY_ADDRESS`) or starts a local one.
    `phases` (seconds, e.g. the caller's imports) head the start-up times in the manifest.

    When the last run over OUTPUT completed and neither the inputs nor OUTPUT changed since,
    there is nothing to do: the manifest is updated to say so, and no cluster is touched."""
    phases = dict(phases or {})
    # The caller's phases (its imports and checks) count in the run's wall time.
    started = time.monotonic() - sum(phases.values())
    if not isinstance(config, JobPlan):
        mark = time.monotonic()
        config = plan_job(config)
        phases["plan"] = time.monotonic() - mark
    plan = config
    config, inputs, output, dim = plan.config, plan.inputs, plan.output, plan.dim
    identity = plan.identity
    fingerprint = _input_fingerprint(plan)
    common = common_block(config.to_dict(), time.monotonic() - started)
    run_id = common["run_id"]
    if nothing_left(plan):
        manifest = nothing_to_do_manifest(
            plan.previous, common, time.monotonic() - started, _rounded(phases)
        )
        write_manifest(output, manifest)
        return JobResult.from_manifest(manifest)

    mark = time.monotonic()
    started_local = _connect_ray(config)
    gpus = _gpus_per_replica(config, started_local)
    phases["ray_start"] = time.monotonic() - mark
    calibration_rows = None
    if plan.needs_calibration:
        mark = time.monotonic()
        ranges, calibration_rows = calibrate(plan, gpus)
        plan = dataclasses.replace(
            plan,
            precision=PrecisionSpec.of(plan.precision.name, ranges),
            calibration_source=(
                f"the first {calibration_rows} rows embedded"
                if config.chunking is None  # chunked: the sample is the first documents' chunks
                else f"the {calibration_rows} chunks of the first {config.calibration_rows} documents"
            ),
        )
        phases["calibration"] = time.monotonic() - mark
    _prepare_output_folder(output)
    base = {
        "status": "running",
        **common,
        "identity": identity,
        "model": plan.model,
        "family": plan.family,
        "dim": dim,
        "instruction": config.instruction,
        "normalized": plan.normalized,
        "output": output.uri(),
        "inputs": {
            "files": len(inputs.files),
            "formats": inputs.formats(),
            "root": inputs.prefix + inputs.root,
            "fingerprint": fingerprint,
        },
        "ids": {"column": plan.id_column, "source": plan.id_source},
        "precision": plan.precision.to_dict(),
        "chunking": config.chunking,
        "keep_columns": list(config.keep_columns),
        "num_replicas": config.num_replicas,
        "gpus_per_replica": gpus,
    }
    if plan.calibration_source is not None:
        base["calibration"] = {"source": plan.calibration_source, "rows": calibration_rows}
    # Claims OUTPUT for this run (see sink.StaleWriterError) before anything is written; the
    # writer record and its heartbeat tell a second job that this run is alive (see `owner`).
    base["writer"] = writer_record()
    write_manifest(output, base)
    heartbeat = Heartbeat(lambda: _beat(output, base))
    try:
        return _run_claimed(plan, base, phases, started, run_id, gpus, heartbeat)
    except BaseException as error:
        heartbeat.stop()
        _record_failure(output, base, error, started)
        raise
    finally:
        heartbeat.stop()


def _beat(output: Location, base: dict[str, Any]) -> None:
    """Refresh the writer's heartbeat, while this run still owns OUTPUT."""
    current = read_manifest(output)
    if current is None or current.get("run_id") != base["run_id"]:
        return
    writer = {**base["writer"], "heartbeat_at": time.time()}
    write_manifest(output, {**base, "writer": writer})


def _record_failure(
    output: Location, base: dict[str, Any], error: BaseException, started: float
) -> None:
    """A run that fails says so in `_manifest.json` ("failed", and why), never stays "running";
    unless another run owns OUTPUT by now (its manifest is left alone)."""
    try:
        current = read_manifest(output)
        if current is not None and (
            current.get("run_id") != base["run_id"] or current.get("status") != "running"
        ):
            return  # another run's manifest, or this run's final one
        reason = "interrupted" if isinstance(error, KeyboardInterrupt) else str(error)
        failed = {
            **base,
            "status": "failed",
            "error": f"{type(error).__name__}: {reason}"[:4000],
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(time.monotonic() - started, 3),
        }
        failed.pop("writer", None)
        write_manifest(output, failed)
    except Exception:  # noqa: BLE001 - the job's own error is the one to report
        logger.warning("could not record the failure in %s", output.uri(), exc_info=True)


def _run_claimed(
    plan: JobPlan,
    base: dict[str, Any],
    phases: dict[str, float],
    started: float,
    run_id: str,
    gpus: float,
    heartbeat: Heartbeat,
) -> JobResult:
    """The run, once it owns OUTPUT: resume scan, pipeline, counts, final manifest."""
    config, inputs, output = plan.config, plan.inputs, plan.output

    # Resume (see `fragments`): fragments OUTPUT holds whole get no read task; the ids of part
    # files holding rows of other fragments are checked row by row. Scans run as Ray tasks, so
    # those id digests (16 bytes a row) live in the object store, not in the driver, and reach
    # the read tasks zero-copy.
    mark = time.monotonic()
    scan_remote = ray.remote(num_returns=2)(scan_output)
    resume = _ReadFilter(read_settings(config, inputs.prefix + inputs.root, plan.family))
    vectors, errors = part_files(output)
    if vectors or errors:
        keys = [fragment_key(group, resume.read_config) for group in read_groups(inputs)]
        done_ref, before_ref = ray.remote(num_returns=2)(scan_for_resume).remote(
            output, [key for key in keys if key is not None]
        )
        before = ray.get(before_ref)
        resume = _ReadFilter(
            resume.read_config,
            done_ref if before.ids_read else None,
            before.done_fragments,
            sum(before.done_fragments.get(key, 0) for key in keys if key is not None),
            before.done_documents,
            before.done_chunks,
        )
        phases["resume_scan"] = time.monotonic() - mark
        logger.warning(
            "resuming: %d rows embedded and %d failed are already in %s and will be skipped "
            "(%d input fragments done whole; ids read from %d of %d files)",
            before.rows_embedded,
            before.rows_failed,
            output.uri(),
            len(before.done_fragments),
            before.files_read_by_id,
            before.files,
        )

    ledger, ledger_name = start_ledger(run_id)
    try:
        tally, execute_seconds, timings = _execute(plan, run_id, gpus, resume, ledger, ledger_name)
    finally:
        ray.kill(ledger)
    tally.skipped += resume.skipped_rows  # rows of the fragments that got no read task
    tally.documents += resume.skipped_documents
    tally.chunks += resume.skipped_chunks
    forward = timings.pop("forward", None)
    phases.update(timings)
    phases["pipeline"] = execute_seconds

    # Counts of what OUTPUT holds come from its files, not from memory.
    _, after_ref = scan_remote.remote(output)
    manifest = finished_manifest(
        base,
        tally,
        ray.get(after_ref),
        time.monotonic() - started,
        execute_seconds,
    )
    manifest["output_fingerprint"] = output_fingerprint(output)
    manifest["phases"] = _rounded(phases)
    if forward is not None:
        # How the replicas ran the model (the first to load: they share one config): device,
        # dtype, forward mode and attention kernel as `auto` resolved them there.
        manifest["forward"] = forward
    manifest.pop("writer", None)
    heartbeat.stop()  # before the final manifest, which no beat may overwrite
    write_manifest(output, manifest)
    _remove_temporary_folders(output)
    return JobResult.from_manifest(manifest)


@dataclass(frozen=True)
class _ReadFilter:
    """What the read stage skips on a rerun (see `fragments`)."""

    read_config: dict[str, Any]  # decides the fragment keys
    done_ref: Any = None  # ObjectRef of the sorted id digests to check rows against, or None
    done_fragments: dict[str, int] = dataclasses.field(default_factory=dict)  # no read task
    skipped_rows: int = 0  # rows of those fragments
    skipped_documents: int = 0  # their documents (rows, unless chunked)
    skipped_chunks: int = 0  # their chunk rows (chunked jobs)


def _execute(
    plan: JobPlan, run_id: str, gpus: float, resume: _ReadFilter, ledger: Any, ledger_name: str
) -> tuple[WriteTally, float, dict[str, Any]]:
    """Build and run the streaming pipeline; returns the sink's tally, the pipeline's seconds,
    and the replicas' start-up times (seconds from the pipeline's start)."""
    config, dim = plan.config, plan.dim
    # Ray Data's bars on a terminal (as Ray decides: by stdout); elsewhere the job's own line
    # (see `progress`) unless --ray-progress asks for Ray's logged blocks.
    ray_shows = config.progress and (config.ray_progress or sys.stdout.isatty())
    DataContext.get_current().enable_progress_bars = ray_shows
    if not ray_shows:  # off, or replaced by the job's line: Ray's "how to enable" is not news
        logging.getLogger("ray.data._internal.progress").addFilter(_PROGRESS_DISABLED_NOTICE)
    reporter = None
    if config.progress and not ray_shows:
        total = estimate_rows(plan.inputs)
        reporter = ProgressReporter(
            lambda: ray.get(ledger.progress.remote(), timeout=10),
            None if total is None else max(0, total - resume.skipped_rows),
            config.progress_interval_s,
        )
    spec = _read_spec(plan)
    dataset = read_datasource(
        CorpusDatasource(
            plan.inputs, spec, resume.done_ref, resume.read_config, resume.done_fragments
        )
    )
    # The same stages as `embed_dataset` (see map_stages), on the job's own rows.
    dataset = apply_stages(
        dataset, _embedding_stages(plan, gpus, ledger_name, done_ref=resume.done_ref)
    )
    metadata = schema_metadata(
        plan.model,
        dim,
        config.instruction,
        plan.normalized,
        plan.family,
        plan.precision,
        config.chunking,
    )
    sink = EmbeddingSink(
        SinkSettings(
            plan.output.uri(),  # absolute: workers do not share the driver's working directory
            config.storage_options,
            dim,
            tuple(metadata.items()),
            config.rows_per_file,
            run_id,
            plan.precision.name,
            chunking=config.chunking is not None,
            kept=plan.kept,
        )
    )
    executing, executing_at = time.monotonic(), time.time()
    try:
        dataset.write_datasink(sink)  # runs the whole streaming pipeline
    finally:
        if reporter is not None:
            reporter.stop()
    execute_seconds = time.monotonic() - executing
    reported = ray.get(ledger.timings.remote())
    timings = {
        name: max(0.0, reported[key] - executing_at)
        for name, key in (("replica_ready", "first_ready"), ("first_batch", "first_batch"))
        if reported[key] is not None
    }
    if reported.get("forward") is not None:
        timings["forward"] = reported["forward"]  # not a time: moved to the manifest's own key
    return sink.tally, execute_seconds, timings


def _read_spec(plan: JobPlan) -> ReadSpec:
    config = plan.config
    vl = plan.family == "vl"
    return ReadSpec(
        id_column=plan.id_column,
        text_column=config.text_column,
        image_column=config.image_column if vl else None,
        block_rows=min(1024, config.rows_per_file),
        video_column=config.video_column if vl else None,
        keep=plan.kept,
    )


def calibrate(plan: JobPlan, gpus: float) -> tuple[np.ndarray, int]:
    """int8 / uint8 ranges: the per-dimension min and max of the float32 vectors of the first
    `calibration_rows` input rows (in input order), embedded by the job's own stages on one
    replica before the main pass. Returns (ranges (2, dim), rows embedded). Rows that fail are
    left out (the main pass reports them); a sample with no good row fails the job."""
    import pyarrow.compute as pc

    config = plan.config
    dataset = read_datasource(CorpusDatasource(plan.inputs, _read_spec(plan)))
    dataset = dataset.limit(config.calibration_rows)
    float32 = dataclasses.replace(plan, precision=PrecisionSpec())
    dataset = apply_stages(dataset, _embedding_stages(float32, gpus, None, replicas=1))
    pieces = []
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        ok = batch.filter(pc.equal(batch.column("status"), "ok"))
        if ok.num_rows:
            values = ok.column("embedding").combine_chunks().flatten().to_numpy()
            pieces.append(values.reshape(ok.num_rows, plan.dim))
    if not pieces:
        raise ValueError(
            f"calibration for precision {config.precision}: none of the first "
            f"{config.calibration_rows} rows could be embedded; fix the input (see a float32 "
            "run's _errors/) or give --calibration FILE"
        )
    sample = np.concatenate(pieces)
    return calibration_ranges(sample), int(sample.shape[0])


def _embedding_stages(
    plan: JobPlan,
    gpus: float,
    ledger_name: str | None,
    replicas: int | None = None,
    done_ref: Any = None,
) -> tuple[MapStage, ...]:
    config = plan.config
    resources = StageResources(
        prepare_rows=plan.batch_rows,
        # Chunked: a replica call takes one prepare block whole (the chunks of its documents),
        # so Ray Data never cuts a document's chunks into two calls, nor two write tasks.
        embed_rows=None if config.chunking is not None else plan.embed_rows,
        num_replicas=replicas or config.num_replicas,
        cpus_per_replica=config.cpus_per_replica,
        gpus_per_replica=gpus,
    )
    # `plan.model` is the model as the workers must name it (a local folder made absolute).
    load = dataclasses.replace(config.load_options(), model=plan.model)
    prepare = PrepareSettings(
        load,
        config.instruction,
        config.truncate,
        config.storage_options,
        chunk_tokens=config.chunk_tokens,
        chunk_overlap=config.chunk_overlap,
        done_ref=done_ref if config.chunking is not None else None,
    )
    embed = EmbedSettings(load, plan.dim, ledger_name, plan.precision)
    return (
        prepare_stage(prepare_batch, {"settings": prepare}, resources),
        embed_stage(EmbedWorker, {"settings": embed}, resources),
    )


class _DropProgressDisabledNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled.")


_PROGRESS_DISABLED_NOTICE = _DropProgressDisabledNotice()  # one instance: addFilter de-duplicates


def _rounded(phases: dict[str, float]) -> dict[str, float]:
    return {name: round(seconds, 3) for name, seconds in phases.items()}


def _check_inputs_fit(inputs: InputSet, family: str, config: JobConfig) -> None:
    formats = set(inputs.formats())
    for media in ("images", "videos"):
        if media in formats and family != "vl":
            raise ValueError(
                f"the inputs include {media[:-1]} files, but {config.model} is a {family} model; "
                f"{media} need a VL model"
            )
    columnless = formats & {"txt", "images", "videos"}
    if config.id_column is not None and columnless:
        raise ValueError(
            f"--id-column {config.id_column!r} cannot apply to {' and '.join(sorted(columnless))} inputs, which have no "
            "columns (their ids are always derived: file:line, or the image's or video's path)"
        )


def _connect_ray(config: JobConfig) -> bool:
    """Connects; True when this call started a local cluster (one with no autoscaler)."""
    if ray.is_initialized():
        return False
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return False
    ray.init(num_cpus=config.num_cpus, logging_level=logging.WARNING)
    return True


def _gpus_per_replica(config: JobConfig, started_local: bool = False) -> float:
    return gpus_per_replica(config.gpus_per_replica, started_local)


def _prepare_output_folder(output: Location) -> None:
    if output.fs.type_name in ATOMIC_PUT_FILESYSTEMS:
        return  # object stores have no folders to create, and no temporary files to clean
    output.fs.create_dir(output.path, recursive=True)
    _remove_temporary_folders(output)  # a killed run's half-written files are never trusted


def _remove_temporary_folders(output: Location) -> None:
    if output.fs.type_name in ATOMIC_PUT_FILESYSTEMS:
        return
    for folder in (output.child(TMP_DIR), output.child(ERRORS_DIR, TMP_DIR)):
        if output.fs.get_file_info(folder.path).type != pafs.FileType.NotFound:
            output.fs.delete_dir(folder.path)
