"""`run_rerank_job`: score (query, document) pairs of a table with a reranker, into OUTPUT.

    read (Ray Data's parquet / json / csv readers) -> query groups (a row holding a query and a
    list of candidates is one; pairs, one per row, are grouped by query id)
        -> mark groups already in OUTPUT `skipped` (resume)
        -> rerank (actor pool: one Reranker per replica; the core batches the pairs by tokens)
        -> write (atomic parquet: scored rows + `_errors/`) -> count OUTPUT -> `_manifest.json`

The embedding job's machinery is reused: input discovery and storage (`discovery`, `storage`),
atomic part files named by their ids (`layout`), the ledger that bounds replica deaths per batch
(`ledger`; the replica's failure layers are `failure_layers`'s `rerank_layers`), the manifest written at the start (claiming OUTPUT: a stale writer stops, see
`sink.StaleWriterError`) and at the end with counts read back from OUTPUT's files, and the
count check. Resume is by query: a query with rows in a part file is done whole (see
`rerank_sink`), so a rerun after a kill scores exactly the queries that are not.

A query or document cell is a text or (VL) an item object (see `rerank_cells`); when a column
holds items the read adds Ray Data's `path` column (`include_paths`), so that relative image and
video paths resolve against the folder of the table file holding the row.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from .dataset_stage import gpus_per_replica
from .discovery import InputSet, discover
from .identity import model_path
from .layout import ERRORS_DIR, TMP_DIR
from .ledger import start_ledger
from .manifest import common_block, write_manifest
from .rerank_cells import PATH_COLUMN, holds_items
from .rerank_config import TABLE_FORMATS, RerankJobConfig
from .rerank_groups import pairs_to_group, to_groups, with_query_key
from .rerank_output import (
    check_rerank_output,
    count_output,
    done_queries,
    finished_rerank_manifest,
)
from .rerank_sink import RerankSink, RerankSinkSettings
from .rerank_stage import (
    DEFAULT_GROUPS_PER_CALL,
    RerankSettings,
    RerankWorker,
)
from .storage import ATOMIC_PUT_FILESYSTEMS, Location, resolve

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RerankPlan:
    config: RerankJobConfig
    model: str  # absolute when a local folder (workers have other working directories)
    inputs: InputSet
    output: Location
    family: str
    listed: bool  # the document column holds lists (a query and its candidates per row)
    query_ids: str | None  # column of query ids, or None (derived)
    document_ids: str | None  # column of document ids, or None (derived)
    previous: dict[str, Any] | None = None
    # The query or document column holds item objects (VL): the read carries each row's file
    # (Ray Data's `path` column) so that relative references resolve against its folder.
    items: bool = False

    @property
    def identity(self) -> dict[str, Any]:
        """What makes two rerank jobs' OUTPUTs one (compared by `identity.identity_differences`,
        as the embedding job's): the model as `identity.model_path` names it, the instruction,
        and in place of a text column, dim and precision the rerank job's own fields."""
        config = self.config
        return {
            "model": self.model,
            "instruction": config.instruction,
            "top_n": config.top_n,
            "query_column": config.query_column,
            "document_column": config.document_column,
            "query_id_column": self.query_ids,
            "document_id_column": self.document_ids,
        }


def _schema(inputs: InputSet) -> pa.Schema:
    """The first input file's columns (jsonl / csv: read with pyarrow's own readers)."""
    first = inputs.files[0]
    if first.format == "parquet":
        return pq.read_schema(first.path, filesystem=inputs.fs)
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson

    with inputs.fs.open_input_stream(first.path) as stream:
        data = stream.read()
    reader = pjson.read_json if first.format == "jsonl" else pcsv.read_csv
    return reader(pa.BufferReader(data)).schema


def plan_rerank_job(config: RerankJobConfig) -> RerankPlan:
    """Check the job without a cluster: the inputs exist and have the columns, the model is a
    reranker (its tokenizer is loaded, no weights), OUTPUT is empty or this same job's."""
    from qwen3_embed import RerankPreparer

    storage = dict(config.storage_options)
    inputs = discover(config.input, config.format, storage)
    unsupported = sorted(set(inputs.formats()) - set(TABLE_FORMATS))
    if unsupported:
        raise ValueError(
            f"rerank reads tables (parquet, jsonl, csv); the inputs include {', '.join(unsupported)} files"
        )
    model = model_path(config.model)
    load = dataclasses.replace(config.load_options(), model=model)
    preparer = RerankPreparer.from_options(load)  # refuses an embedding checkpoint, by name
    schema = _schema(inputs)
    missing = [c for c in (config.query_column, config.document_column) if c not in schema.names]
    for given in (config.query_id_column, config.document_id_column):
        if given is not None and given not in schema.names:
            missing.append(given)
    if missing:
        raise ValueError(
            f"the input has no column(s) {missing}; its columns are {schema.names} "
            "(see --query-column, --document-column, --query-id-column, --document-id-column)"
        )
    kind = schema.field(config.document_column).type
    listed = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    items = any(
        holds_items(schema.field(c).type) for c in (config.query_column, config.document_column)
    )
    if items and PATH_COLUMN in schema.names:
        raise ValueError(
            f"the input has a column named {PATH_COLUMN!r}, which the job needs for the file of "
            "each row when a column holds items (relative image / video paths); rename it"
        )
    query_ids = config.query_id_column or ("query_id" if "query_id" in schema.names else None)
    document_ids = config.document_id_column or next(
        (name for name in ("document_id", "doc_id") if name in schema.names), None
    )
    output = resolve(config.output, storage)
    plan = RerankPlan(
        config, model, inputs, output, preparer.family, listed, query_ids, document_ids, items=items
    )
    return dataclasses.replace(plan, previous=check_rerank_output(output, plan.identity))


def _read(plan: RerankPlan) -> Any:
    import ray.data

    config = plan.config
    columns = [config.query_column, config.document_column]
    columns += [c for c in (plan.query_ids, plan.document_ids) if c is not None]
    # Items: each row's file, for its relative references (Ray Data's `path` column).
    with_paths = {"include_paths": True} if plan.items else {}
    datasets = []
    for fmt in plan.inputs.formats():
        paths = [f.path for f in plan.inputs.files if f.format == fmt]
        fs = plan.inputs.fs
        if fmt == "parquet":
            ds = ray.data.read_parquet(paths, filesystem=fs, columns=columns, **with_paths)
        elif fmt == "jsonl":
            ds = ray.data.read_json(paths, filesystem=fs, **with_paths)  # pyarrow: JSON lines
        else:
            ds = ray.data.read_csv(paths, filesystem=fs, **with_paths)
        datasets.append(ds.select_columns([*columns, PATH_COLUMN] if plan.items else columns))
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def run_rerank_job(config: RerankJobConfig | RerankPlan) -> dict[str, Any]:
    """Run (or resume) the job; returns the final manifest (also OUTPUT/_manifest.json)."""
    from ray.data import ActorPoolStrategy, DataContext

    started = time.monotonic()
    plan = config if isinstance(config, RerankPlan) else plan_rerank_job(config)
    config, output = plan.config, plan.output
    common = common_block(config.to_dict(), time.monotonic() - started)
    run_id = common["run_id"]
    started_local = _connect_ray(config)
    gpus = gpus_per_replica(config.gpus_per_replica, started_local)
    if output.fs.type_name not in ATOMIC_PUT_FILESYSTEMS:
        output.fs.create_dir(output.path, recursive=True)
        _remove_tmp(output)  # a killed run's half-written files are never trusted
    base = {
        "kind": "rerank",
        "status": "running",
        **common,
        "identity": plan.identity,
        "model": plan.model,
        "family": plan.family,
        "output": output.uri(),
        "inputs": {"files": len(plan.inputs.files), "formats": plan.inputs.formats()},
        "form": "list" if plan.listed else "pairs",
        "num_replicas": config.num_replicas,
        "gpus_per_replica": gpus,
    }
    write_manifest(output, base)  # claims OUTPUT for this run before anything is written
    digests, orphans = done_queries(output)
    if orphans:
        logger.warning("deleted %d error file(s) of write tasks that never finished", orphans)
    done = ray.put(digests) if len(digests) else None
    if len(digests):
        logger.warning("resuming: %d queries already in %s are skipped", len(digests), output.uri())

    DataContext.get_current().enable_progress_bars = config.progress
    dataset = _read(plan)
    if plan.listed:
        dataset = dataset.map_batches(
            to_groups, fn_kwargs={"plan": plan, "done": done}, batch_format="pyarrow"
        )
    else:
        dataset = dataset.map_batches(
            with_query_key, fn_kwargs={"plan": plan}, batch_format="pyarrow"
        )
        dataset = dataset.groupby("__query_id").map_groups(
            pairs_to_group, fn_kwargs={"done": done}, batch_format="pyarrow"
        )
    ledger, ledger_name = start_ledger(run_id)
    load = dataclasses.replace(config.load_options(), model=plan.model)
    settings = RerankSettings(
        load,
        config.instruction,
        config.truncate,
        config.top_n,
        ledger_name,
        config.storage_options,
    )
    dataset = dataset.map_batches(
        RerankWorker,
        fn_constructor_kwargs={"settings": settings},
        compute=ActorPoolStrategy(size=config.num_replicas),
        batch_format="pyarrow",
        batch_size=config.batch_rows or DEFAULT_GROUPS_PER_CALL,
        num_cpus=config.cpus_per_replica,
        num_gpus=gpus,
    )
    metadata = {"model": plan.model, "instruction": config.instruction or "", "kind": "rerank"}
    sink = RerankSink(
        RerankSinkSettings(
            output.uri(),
            config.storage_options,
            tuple(metadata.items()),
            config.rows_per_file,
            run_id,
        )
    )
    executing = time.monotonic()
    try:
        dataset.write_datasink(sink)
    finally:
        ray.kill(ledger)
    execute_seconds = time.monotonic() - executing
    manifest = finished_rerank_manifest(
        base,
        sink.tally,
        count_output(output),
        config.top_n,
        time.monotonic() - started,
        execute_seconds,
    )
    write_manifest(output, manifest)
    _remove_tmp(output)
    return manifest


def _connect_ray(config: RerankJobConfig) -> bool:
    if ray.is_initialized():
        return False
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return False
    ray.init(num_cpus=config.num_cpus, logging_level=logging.WARNING)
    return True


def _remove_tmp(output: Location) -> None:
    if output.fs.type_name in ATOMIC_PUT_FILESYSTEMS:
        return
    for folder in (output.child(TMP_DIR), output.child(ERRORS_DIR, TMP_DIR)):
        if output.fs.get_file_info(folder.path).type != pafs.FileType.NotFound:
            output.fs.delete_dir(folder.path)
