"""`run_embedding_job`: the whole batch job, from a `JobConfig` to a `JobResult`.

    read (Ray Data source, CPU) -> prepare (CPU tasks: the core's Preparer)
        -> embed (actor pool: one Embedder per replica, a GPU each when there are GPUs)
        -> write (atomic parquet files + error files) -> count OUTPUT -> _manifest.json

Everything streams: Ray Data's backpressure bounds what is in flight, the driver only plans,
and counts come back as a few numbers per write task plus one scan of OUTPUT's id column.
Everything that can be checked without a cluster (inputs exist, model and dim are valid, OUTPUT
belongs to this job) is checked first.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow.fs as pafs
import ray
from ray.data import ActorPoolStrategy, DataContext, read_datasource

from .config import DEFAULT_BATCH_ROWS, DEFAULT_EMBED_ROWS, JobConfig
from .datasource import CorpusDatasource
from .inputs import InputSet, discover
from .layout import ERRORS_DIR, TMP_DIR, schema_metadata
from .manifest import JobResult, finished_manifest, write_manifest
from .readers import ReadSpec
from .resume import check_output, part_files, scan_output
from .sink import EmbeddingSink, SinkSettings
from .stages import EmbedSettings, EmbedWorker, PrepareSettings, prepare_batch
from .storage import ATOMIC_PUT_FILESYSTEMS, Location, resolve

logger = logging.getLogger(__name__)

PREPARE_TASK_MEMORY = 1024**3
# A replica that dies (killed, preempted, out of memory) is restarted, as often as it takes, and
# its unfinished batches are retried on it, each at most this many times: a batch that kills
# every replica it reaches fails the job instead of looping forever. (Ray Data's own defaults are
# -1 and -1, i.e. unbounded; they are spelled out here so a Ray upgrade cannot change them.)
REPLICA_MAX_RESTARTS = -1
REPLICA_TASK_RETRIES = 3


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

    @property
    def batch_rows(self) -> int:
        return self.config.batch_rows or DEFAULT_BATCH_ROWS[self.family]

    @property
    def embed_rows(self) -> int:
        """Rows per replica call: `batch_rows` when set, else large text blocks (see config)."""
        return self.config.batch_rows or DEFAULT_EMBED_ROWS[self.family]

    @property
    def identity(self) -> dict[str, Any]:
        """What makes two jobs' vectors comparable; a non-empty OUTPUT must match it."""
        return {
            "model": self.model,
            "dim": self.dim,
            "instruction": self.config.instruction,
            "normalized": self.normalized,
        }


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
    model = os.path.abspath(config.model) if os.path.isdir(config.model) else config.model
    preparer = Preparer.from_pretrained(model, max_length=config.max_length)  # no weights
    info = preparer.info
    dim = preparer.validate_dim(config.dim)  # the core's rule, checked without loading weights
    _check_inputs_fit(inputs, info.family, config)
    output = resolve(config.output, storage)
    for folder in inputs.listed_folders:
        if output.prefix == inputs.prefix and (output.path + "/").startswith(
            folder.rstrip("/") + "/"
        ):
            raise ValueError(
                f"OUTPUT {output.uri()} lies inside the input folder {inputs.prefix}{folder}: a rerun would read "
                "the vectors back as input; put OUTPUT elsewhere"
            )
    plan = JobPlan(config, model, inputs, output, info.family, dim, info.normalize)
    check_output(output, plan.identity)
    return plan


def run_embedding_job(config: JobConfig | JobPlan) -> JobResult:
    """Run (or resume) the job and return its result. Attaches to the running Ray cluster
    (`ray.init` already called, `config.ray_address` or `$RAY_ADDRESS`) or starts a local one."""
    from qwen3_embed import __version__

    started = time.monotonic()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    plan = config if isinstance(config, JobPlan) else plan_job(config)
    config, inputs, output, dim = plan.config, plan.inputs, plan.output, plan.dim
    identity = plan.identity

    _connect_ray(config)
    gpus = _gpus_per_replica(config)
    run_id = uuid.uuid4().hex
    _prepare_output_folder(output)
    base = {
        "status": "running",
        "run_id": run_id,
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
        },
        "config": config.to_dict(),
        "replicas": config.replicas,
        "gpus_per_replica": gpus,
        "producer": f"qwen3-embed {__version__}",
        "started_at": started_at,
    }
    # Claims OUTPUT for this run (see sink.StaleWriterError) before anything is written.
    write_manifest(output, base)

    # Scans run as Ray tasks, so the id digests (16 bytes a row) live in the object store, not in
    # the driver, and reach the read tasks zero-copy.
    scan_remote = ray.remote(num_returns=2)(scan_output)
    done_ref = None
    vectors, errors = part_files(output)
    if vectors or errors:
        done_ref, before_ref = scan_remote.remote(output)
        before = ray.get(before_ref)
        logger.warning(
            "resuming: %d rows embedded and %d failed are already in %s and will be skipped",
            before.rows_embedded,
            before.rows_failed,
            output.uri(),
        )

    DataContext.get_current().enable_progress_bars = config.progress
    spec = ReadSpec(
        id_column=config.id_column,
        text_column=config.text_column,
        image_column=config.image_column if plan.family == "vl" else None,
        block_rows=min(1024, config.rows_per_file),
    )
    dataset = read_datasource(CorpusDatasource(inputs, spec, done_ref))
    dataset = dataset.map_batches(
        prepare_batch,
        fn_kwargs={
            "settings": PrepareSettings(
                plan.model,
                config.max_length,
                config.instruction,
                config.truncate,
                config.storage_options,
            )
        },
        batch_format="pyarrow",
        batch_size=plan.batch_rows,
        num_cpus=1,
        # A real reservation (tokenizer / processor and a batch of media), and different remote
        # args from the replicas: Ray Data fuses maps with equal args, which on CPU-only clusters
        # would run tokenisation inside the replicas, serialised with the forward passes.
        memory=PREPARE_TASK_MEMORY,
    )
    dataset = dataset.map_batches(
        EmbedWorker,
        fn_constructor_kwargs={
            "settings": EmbedSettings(
                plan.model,
                dim,
                config.device,
                config.dtype,
                config.max_length,
                config.batch_tokens,
                config.forward_mode,
                config.compile,
            )
        },
        compute=ActorPoolStrategy(size=config.replicas),
        batch_format="pyarrow",
        batch_size=plan.embed_rows,
        num_cpus=config.cpus_per_replica,
        num_gpus=gpus,
        max_restarts=REPLICA_MAX_RESTARTS,
        max_task_retries=REPLICA_TASK_RETRIES,
    )
    metadata = schema_metadata(plan.model, dim, config.instruction, plan.normalized, plan.family)
    sink = EmbeddingSink(
        SinkSettings(
            output.uri(),  # absolute: workers do not share the driver's working directory
            config.storage_options,
            dim,
            tuple(metadata.items()),
            config.rows_per_file,
            run_id,
        )
    )
    executing = time.monotonic()
    dataset.write_datasink(sink)  # runs the whole streaming pipeline
    execute_seconds = time.monotonic() - executing

    # Counts of what OUTPUT holds come from its files, not from memory.
    _, after_ref = scan_remote.remote(output)
    manifest = finished_manifest(
        base, sink.tally, ray.get(after_ref), time.monotonic() - started, execute_seconds
    )
    write_manifest(output, manifest)
    _remove_temporary_folders(output)
    return JobResult.from_manifest(manifest)


def _check_inputs_fit(inputs: InputSet, family: str, config: JobConfig) -> None:
    formats = set(inputs.formats())
    if "images" in formats and family != "vl":
        raise ValueError(
            f"the inputs include image files, but {config.model} is a {family} model; images need a VL model"
        )
    columnless = formats & {"txt", "images"}
    if config.id_column is not None and columnless:
        raise ValueError(
            f"--id-column {config.id_column!r} cannot apply to {' and '.join(sorted(columnless))} inputs, which have no "
            "columns (their ids are always derived: file:line, or the image's path)"
        )


def _connect_ray(config: JobConfig) -> None:
    if ray.is_initialized():
        return
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=config.num_cpus, logging_level=logging.WARNING)


def _gpus_per_replica(config: JobConfig) -> float:
    available = ray.cluster_resources().get("GPU", 0)
    if config.gpus_per_replica is None:
        if available < 1:
            # "auto" sees the cluster as it is now: one that autoscales GPU nodes from zero looks
            # GPU-less, and the replicas would silently run on CPUs.
            logger.warning(
                "gpus_per_replica is auto and the cluster has no GPU now: replicas run on CPU. "
                "On a cluster that autoscales GPU nodes from 0, pass --gpus-per-replica explicitly."
            )
        return 1.0 if available >= 1 else 0.0
    if config.gpus_per_replica > 0 and available < config.gpus_per_replica:
        logger.warning(
            "gpus_per_replica=%s but the cluster has %s GPU(s) now; replicas wait until an autoscaler adds them",
            config.gpus_per_replica,
            available,
        )
    return float(config.gpus_per_replica)


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
