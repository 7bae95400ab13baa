"""The rerank job's Ray Data sink and what OUTPUT holds:

    OUTPUT/
      part-<hash>.parquet          query_id, document_id, score: float32, rank: int32, num_tokens
      _errors/part-<hash>.parquet  query_id, document_id, error, code, query_failed
      _manifest.json               identity, config, counts, the count check

A write task gets whole query groups (the replica stage emits one row per group, with its
pairs in lists) and writes at most two files, each atomically under a
name derived from its ids (`layout.part_name`): first its error rows, then its scored rows, in
ONE part file. So a query with a row in a part file is done whole, and a query all of whose
pairs failed is done when its error rows (flagged `query_failed`) are in `_errors/`. An error
file written by a task that was killed before its part file is an orphan: the next run deletes
it (see `rerank_job.orphan_error_files`) and scores its queries again, so no row is ever written
twice. Before writing, a task checks that `_manifest.json` still names its own run (as the
embedding job's sink does).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor
from ray.data.datasource.datasink import WriteResult

from .layout import ERRORS_DIR, MANIFEST_FILE, part_name
from .rows import (
    CODE_INVALID_ROW,
    RERANK_ERRORS_SCHEMA,
    RERANKED_SCHEMA,
    STATUS_ERROR,
    STATUS_SKIPPED,
)
from .sink import StaleWriterError
from .storage import read_bytes, resolve, write_atomically


def pair_key(query_id: str, document_id: str | None) -> str:
    """One string per pair, for file names and duplicate checks (\\x1f cannot occur in ids
    read from text formats by accident)."""
    return f"{query_id}\x1f{document_id or ''}"


def explode(groups: list[dict[str, Any]]) -> tuple[pa.Table, pa.Table]:
    """Group rows (`rerank_stage.SCORED_SCHEMA`) -> (kept scored rows, error rows)."""
    kept: dict[str, list[Any]] = {name: [] for name in RERANKED_SCHEMA.names}
    errors: dict[str, list[Any]] = {name: [] for name in RERANK_ERRORS_SCHEMA.names}
    for group in groups:
        if group["status"] == STATUS_SKIPPED:
            continue
        query_failed = group["status"] == STATUS_ERROR
        document_ids = group["document_ids"] or []
        if not document_ids and query_failed:  # a group refused whole, with no candidates
            for name, value in zip(
                RERANK_ERRORS_SCHEMA.names,
                (group["id"], None, group["error"] or "invalid row", CODE_INVALID_ROW, True),
                strict=True,
            ):
                errors[name].append(value)
            continue
        count = len(document_ids)
        scores = group["scores"] or [None] * count
        reasons = group["errors"] or [group["error"]] * count
        codes = group["codes"] or [CODE_INVALID_ROW] * count
        for c, document_id in enumerate(document_ids):
            if scores[c] is None:
                for name, value in zip(
                    RERANK_ERRORS_SCHEMA.names,
                    (group["id"], document_id, reasons[c] or "not scored", codes[c] or CODE_INVALID_ROW, query_failed),
                    strict=True,
                ):  # fmt: skip
                    errors[name].append(value)
            elif group["kept"][c]:
                kept["query_id"].append(group["id"])
                kept["document_id"].append(document_id)
                kept["score"].append(scores[c])
                kept["rank"].append(group["ranks"][c])
                kept["num_tokens"].append(group["num_tokens"][c])
    return (
        pa.table(kept, schema=RERANKED_SCHEMA),
        pa.table(errors, schema=RERANK_ERRORS_SCHEMA),
    )


@dataclass(frozen=True)
class RerankSinkSettings:
    output: str
    storage_options: tuple[tuple[str, Any], ...]
    metadata: tuple[tuple[str, str], ...]
    rows_per_file: int
    run_id: str


@dataclass
class RerankTally:
    """What this run saw, summed over write tasks (queries and pairs skipped included)."""

    queries: int = 0
    pairs: int = 0
    written: int = 0  # scored rows written (top_n kept)
    dropped: int = 0  # scored, ranked below top_n
    failed: int = 0
    skipped_queries: int = 0
    skipped_pairs: int = 0
    tokens: int = 0
    files: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)

    def add(self, other: dict[str, Any]) -> None:
        for name, value in other.items():
            if name == "error_codes":
                for code, count in value.items():
                    self.error_codes[code] = self.error_codes.get(code, 0) + count
            else:
                setattr(self, name, getattr(self, name) + int(value))


class RerankSink(Datasink[dict]):
    def __init__(self, settings: RerankSinkSettings):
        self.settings = settings
        self.tally = RerankTally()

    @property
    def min_rows_per_write(self) -> int:
        return self.settings.rows_per_file

    def get_name(self) -> str:
        return "WriteReranked"

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict:
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        groups = [row for table in tables for row in table.to_pylist()]
        counts: dict[str, Any] = {"error_codes": {}}
        if not groups:
            return counts
        kept, errors = explode(groups)
        skipped = [g for g in groups if g["status"] == STATUS_SKIPPED]
        counts["queries"] = len(groups)
        counts["pairs"] = sum(g["num_pairs"] for g in groups)
        counts["skipped_queries"] = len(skipped)
        counts["skipped_pairs"] = sum(g["num_pairs"] for g in skipped)
        counts["dropped"] = sum(
            1
            for g in groups
            for score, keep in zip(g["scores"] or [], g["kept"] or [], strict=True)
            if score is not None and not keep
        )
        output = resolve(self.settings.output, dict(self.settings.storage_options))
        if kept.num_rows or errors.num_rows:
            self._check_still_owner(output)
        files = 0
        # Errors first: a part file present means its task's error file is complete too.
        if errors.num_rows:
            files += self._write(output.child(ERRORS_DIR), errors, None)
            counts["failed"] = errors.num_rows
            codes = pc.value_counts(errors.column("code")).to_pylist()
            counts["error_codes"] = {entry["values"]: entry["counts"] for entry in codes}
        if kept.num_rows:
            files += self._write(output, kept, dict(self.settings.metadata))
            counts["written"] = kept.num_rows
            counts["tokens"] = int(pc.sum(kept.column("num_tokens")).as_py() or 0)
        counts["files"] = files
        return counts

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        for counts in write_result.write_returns:
            self.tally.add(counts)

    def _check_still_owner(self, output) -> None:
        manifest = json.loads(read_bytes(output.child(MANIFEST_FILE)))
        if manifest.get("run_id") != self.settings.run_id:
            raise StaleWriterError(
                f"run {manifest.get('run_id')} now owns {output.uri()}; this writer of run "
                f"{self.settings.run_id} stops"
            )

    @staticmethod
    def _write(folder, table: pa.Table, metadata: dict[str, str] | None) -> int:
        """One file per task (never split: a query's rows stay in one file, see the module
        docstring)."""
        if metadata:
            table = table.replace_schema_metadata(metadata)
        keys = [
            pair_key(q, d)
            for q, d in zip(
                table.column("query_id").to_pylist(),
                table.column("document_id").to_pylist(),
                strict=True,
            )
        ]
        location = folder.child(part_name(keys))
        write_atomically(location, lambda stream: pq.write_table(table, stream))
        return 1
