"""What a rerank job's OUTPUT holds, read back from its files: its identity (a rerun of another
job is refused), the queries done (resume; orphan error files of interrupted write tasks are
deleted, see `rerank_sink`), the end-of-run counts and count check, and the summary."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .identity import identity_differences
from .layout import ERRORS_DIR, is_part_file
from .rerank_sink import RerankTally, pair_key
from .resume import OutputMismatchError, id_digests, output_entries, read_manifest
from .storage import Location, list_files


def check_rerank_output(output: Location, identity: dict[str, Any]) -> dict[str, Any] | None:
    """Refuse an OUTPUT that is a file, holds files not ours, or was written by another job
    (another kind, or any field of `identity` different); returns its manifest, if any."""
    names = output_entries(output)  # the embedding job's folder rules
    if names is None:
        return None
    manifest = read_manifest(output)
    if manifest is None:
        if any(is_part_file(n) for n in names) or ERRORS_DIR in names:
            raise OutputMismatchError(
                f"OUTPUT {output.uri()} holds part files without a manifest; refusing to add to it"
            )
        return None
    differences = identity_differences(manifest.get("identity") or {}, identity)
    if manifest.get("kind") != "rerank" or differences:
        raise OutputMismatchError(
            f"OUTPUT {output.uri()} holds the output of a different job"
            + (f": {'; '.join(differences)}" if differences else " (not a rerank job)")
            + ". Use a new OUTPUT folder, or delete this one to start over."
        )
    return manifest


def part_paths(output: Location) -> tuple[list[str], list[str]]:
    def listed(location: Location) -> list[str]:
        return sorted(
            info.path
            for info in list_files(location, recursive=False)
            if is_part_file(info.base_name)
        )

    return listed(output), listed(output.child(ERRORS_DIR))


def done_queries(output: Location) -> tuple[np.ndarray, int]:
    """Sorted digests of the queries OUTPUT holds whole, after deleting orphan error files (those
    of a write task killed before its part file: they name a query neither in a part file nor
    failed whole). Returns (digests, orphan files deleted)."""
    parts, errors = part_paths(output)
    scored: set[str] = set()
    for path in parts:
        scored.update(
            pq.read_table(path, filesystem=output.fs, columns=["query_id"]).column(0).to_pylist()
        )
    failed: set[str] = set()
    orphans = 0
    for path in errors:
        table = pq.read_table(path, filesystem=output.fs, columns=["query_id", "query_failed"])
        ids = table.column("query_id").to_pylist()
        whole = table.column("query_failed").to_pylist()
        if any(not flag and query not in scored for query, flag in zip(ids, whole, strict=True)):
            output.fs.delete_file(path)  # its task never wrote its part file: redo its queries
            orphans += 1
            continue
        failed.update(query for query, flag in zip(ids, whole, strict=True) if flag)
    digests = id_digests(sorted(scored | failed))
    return np.unique(digests), orphans


@dataclass
class OutputCounts:
    rows: int = 0
    failed: int = 0
    tokens: int = 0
    queries: int = 0
    files: int = 0
    duplicate_pairs: int = 0
    error_codes: dict[str, int] = dataclasses.field(default_factory=dict)


def count_output(output: Location) -> OutputCounts:
    """What OUTPUT holds, from its files: rows, error rows, distinct queries, duplicate pairs."""
    parts, errors = part_paths(output)
    counts = OutputCounts(files=len(parts) + len(errors))
    keys: list[str] = []
    queries: set[str] = set()
    for path in parts:
        table = pq.read_table(
            path, filesystem=output.fs, columns=["query_id", "document_id", "num_tokens"]
        )
        counts.rows += table.num_rows
        counts.tokens += int(pc.sum(table.column("num_tokens")).as_py() or 0)
        ids = table.column("query_id").to_pylist()
        queries.update(ids)
        keys += [
            pair_key(q, d)
            for q, d in zip(ids, table.column("document_id").to_pylist(), strict=True)
        ]
    codes: dict[str, int] = {}
    for path in errors:
        table = pq.read_table(
            path, filesystem=output.fs, columns=["query_id", "document_id", "code"]
        )
        counts.failed += table.num_rows
        ids = table.column("query_id").to_pylist()
        queries.update(ids)
        keys += [
            pair_key(q, d)
            for q, d in zip(ids, table.column("document_id").to_pylist(), strict=True)
        ]
        for code in table.column("code").to_pylist():
            codes[code] = codes.get(code, 0) + 1
    counts.queries = len(queries)
    counts.duplicate_pairs = len(keys) - len(set(keys))
    counts.error_codes = dict(sorted(codes.items(), key=lambda item: -item[1]))
    return counts


def finished_rerank_manifest(
    base: dict[str, Any],
    tally: RerankTally,
    counts: OutputCounts,
    top_n: int | None,
    wall_seconds: float,
    execute_seconds: float,
) -> dict[str, Any]:
    """The count check: every input query is in OUTPUT (scored, or failed whole), no pair twice,
    and without top_n every input pair is in exactly one place."""
    pairs_ok = top_n is not None or tally.pairs == counts.rows + counts.failed
    return {
        **base,
        "status": "complete",
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "queries_in": tally.queries,
        "pairs_in": tally.pairs,
        "queries_in_output": counts.queries,
        "rows_written": counts.rows,
        "rows_failed": counts.failed,
        "tokens": counts.tokens,
        "duplicate_pairs": counts.duplicate_pairs,
        "error_codes": counts.error_codes,
        "files": counts.files,
        "consistent": tally.queries == counts.queries and counts.duplicate_pairs == 0 and pairs_ok,
        "wall_seconds": round(wall_seconds, 3),
        "execute_seconds": round(execute_seconds, 3),
        "pairs_per_second": round((tally.pairs - tally.skipped_pairs) / max(wall_seconds, 1e-9), 3),
        "this_run": {
            "queries_skipped": tally.skipped_queries,
            "pairs_skipped": tally.skipped_pairs,
            "rows_written": tally.written,
            "pairs_dropped_by_top_n": tally.dropped,
            "rows_failed": tally.failed,
            "files_written": tally.files,
        },
    }


def format_rerank_summary(manifest: dict[str, Any]) -> str:
    run = manifest["this_run"]
    lines = [
        f"qwen3-embed rerank: {manifest['status']} in {manifest['wall_seconds']:.1f} s",
        f"  model        {manifest['model']} ({manifest['family']})",
        f"  input        {manifest['inputs']['files']} file(s), {manifest['form']} form: "
        f"{manifest['queries_in']:,} queries, {manifest['pairs_in']:,} pairs",
        f"  output       {manifest['output']}",
        f"  written      {manifest['rows_written']:,} rows (this run {run['rows_written']:,}; "
        f"{run['queries_skipped']:,} queries skipped as already done; "
        f"{run['pairs_dropped_by_top_n']:,} pairs below top_n)",
        f"  failed       {manifest['rows_failed']:,} pairs"
        + (f" -> {manifest['output'].rstrip('/')}/_errors" if manifest["rows_failed"] else ""),
        f"  throughput   {manifest['pairs_per_second']:,.1f} pairs/s over the whole run",
    ]
    if manifest["consistent"]:
        lines.append(
            "  check        ok: every query in OUTPUT once, no duplicate pair"
            + ("" if manifest["config"]["top_n"] else ", pairs_in = written + failed")
        )
    else:
        lines.append(
            f"  check        FAILED: {manifest['queries_in']:,} queries in, "
            f"{manifest['queries_in_output']:,} in OUTPUT, {manifest['duplicate_pairs']:,} "
            "duplicate pair(s) (did the input change since OUTPUT was started?)"
        )
    return "\n".join(lines)
