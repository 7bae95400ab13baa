"""`_manifest.json` and the end-of-job summary.

The manifest is written twice: at the start (`status: running`, the job's identity and run id,
so that a rerun after a crash can check it is the same job) and at the end (`status: complete`
with the counts). Counts of rows in OUTPUT come from its committed files, not from memory.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .layout import MANIFEST_FILE
from .storage import Location, write_bytes_atomically

if TYPE_CHECKING:
    from .resume import OutputScan
    from .sink import WriteTally


def common_block(
    config: dict[str, Any], seconds_ago: float = 0.0, run_id: str | None = None
) -> dict[str, Any]:
    """What every manifest of a run starts with (embedding job, its "nothing to do" rerun, rerank
    job): the run's id (a new one unless given), its config, the producer, and when it started
    (`seconds_ago`: the time the caller already spent, e.g. its imports and checks)."""
    from qwen3_embed import __version__

    started_at = datetime.fromtimestamp(time.time() - seconds_ago, timezone.utc)
    return {
        "run_id": run_id or uuid.uuid4().hex,
        "config": config,
        "producer": f"qwen3-embed {__version__}",
        "started_at": started_at.isoformat(timespec="seconds"),
    }


def write_manifest(output: Location, manifest: dict[str, Any]) -> None:
    write_bytes_atomically(
        output.child(MANIFEST_FILE),
        (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode(),
    )


def finished_manifest(
    base: dict[str, Any],
    tally: WriteTally,
    scan: OutputScan,
    wall_seconds: float,
    execute_seconds: float,
) -> dict[str, Any]:
    """The end-of-job manifest: `rows_in` counts every input row this run read (skipped ones
    included; a file that is empty or cannot be read, wholly or past some row, counts as one row,
    the error row that reports it, see `readers`); `rows_embedded` / `rows_failed` / `tokens` count what OUTPUT holds, from its files;
    rates are this run's work over this run's whole wall time (cluster start and model loading
    included); `execute_seconds` is the streaming pipeline alone."""
    rows_in = tally.rows
    wall = max(wall_seconds, 1e-9)
    # With chunking, rows are chunks (the count check's unit) and `documents_in` counts the
    # documents they came from; the settings are in `chunking` (from `base`).
    chunked = (
        {"documents_in": tally.documents, "chunks": tally.chunks} if base.get("chunking") else {}
    )
    return {
        **base,
        **chunked,
        "status": "complete",
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows_in": rows_in,
        "rows_embedded": scan.rows_embedded,
        "rows_failed": scan.rows_failed,
        "tokens": scan.tokens,
        "duplicate_ids": scan.duplicate_ids,
        "consistent": is_consistent(
            rows_in, scan.rows_embedded, scan.rows_failed, scan.duplicate_ids
        ),
        "error_codes": scan.error_codes,
        # This run's rows cut at max_length (truncation on): never silent.
        "rows_truncated": tally.truncated,
        # This run's rows whose vector is an identical input's of the same replica call.
        "duplicates_reused": tally.reused,
        "files": scan.files,
        "wall_seconds": round(wall_seconds, 3),
        "execute_seconds": round(execute_seconds, 3),
        "rows_per_second": round((tally.embedded + tally.failed) / wall, 3),
        "tokens_per_second": round(tally.tokens / wall, 3),
        "this_run": {
            "rows_embedded": tally.embedded,
            "rows_failed": tally.failed,
            "rows_skipped": tally.skipped,
            "tokens": tally.tokens,
            "files_written": tally.files,
        },
    }


def _corpus_lines(manifest: dict[str, Any]) -> list[str]:
    """Chunking, truncation and reuse, when they apply."""
    lines = []
    chunking = manifest.get("chunking")
    if chunking:
        lines.append(
            f"  chunks       {manifest.get('chunks', 0):,} from {manifest.get('documents_in', 0):,} "
            f"documents (at most {chunking['chunk_tokens']} tokens, overlap "
            f"{chunking['chunk_overlap']})"
        )
    if manifest.get("rows_truncated"):
        lines.append(
            f"  truncated    {manifest['rows_truncated']:,} rows were cut at max_length and lost "
            "their tail: use --chunk-tokens N to embed long documents whole, as chunks"
        )
    if manifest.get("duplicates_reused"):
        lines.append(
            f"  reused       {manifest['duplicates_reused']:,} rows repeated an input of the same "
            "replica call and took its vector (embedded once)"
        )
    return lines


def nothing_to_do_manifest(
    previous: dict[str, Any], common: dict[str, Any], wall_seconds: float, phases: dict[str, float]
) -> dict[str, Any]:
    """The manifest of a rerun that found every input row already in OUTPUT (see
    `resume.nothing_to_do`): OUTPUT's counts are the last run's, verified unchanged by its
    listing; this run started no replica and embedded nothing."""
    rows_in = previous["rows_in"]
    return {
        **previous,
        **common,
        "status": "complete",
        "nothing_to_do": True,
        # The run that did the work (a chain of no-op reruns keeps pointing at it).
        "done_by_run": previous.get("done_by_run")
        or {"run_id": previous.get("run_id"), "finished_at": previous.get("finished_at")},
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "num_replicas": 0,
        "gpus_per_replica": 0.0,
        "wall_seconds": round(wall_seconds, 3),
        "execute_seconds": 0.0,
        "rows_per_second": 0.0,
        "tokens_per_second": 0.0,
        "phases": phases,
        "this_run": {
            "rows_embedded": 0,
            "rows_failed": 0,
            "rows_skipped": rows_in,
            "tokens": 0,
            "files_written": 0,
        },
    }


def is_consistent(rows_in: int, rows_embedded: int, rows_failed: int, duplicate_ids: int) -> bool:
    """Every input row is in exactly one place."""
    return rows_in == rows_embedded + rows_failed and duplicate_ids == 0


@dataclass(frozen=True)
class JobResult:
    """What a finished job reports; `manifest` is the content of `_manifest.json`."""

    output: str
    rows_in: int
    rows_embedded: int
    rows_failed: int
    tokens: int
    wall_seconds: float
    duplicate_ids: int
    manifest: dict[str, Any]

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> JobResult:
        return cls(
            output=manifest["output"],
            rows_in=manifest["rows_in"],
            rows_embedded=manifest["rows_embedded"],
            rows_failed=manifest["rows_failed"],
            tokens=manifest["tokens"],
            wall_seconds=manifest["wall_seconds"],
            duplicate_ids=manifest["duplicate_ids"],
            manifest=manifest,
        )

    @property
    def consistent(self) -> bool:
        """Every input row is in exactly one place."""
        return is_consistent(self.rows_in, self.rows_embedded, self.rows_failed, self.duplicate_ids)

    def summary(self) -> str:
        return format_summary(self.manifest)


PHASE_NAMES = {
    "imports": "imports",
    "plan": "checks",
    "ray_start": "Ray start",
    "calibration": "int8/uint8 calibration",
    "resume_scan": "resume scan",
    "replica_ready": "first replica ready",
    "first_batch": "first batch embedded",
    "pipeline": "pipeline",
}


def format_phases(phases: dict[str, float]) -> str:
    """`imports 2.1 s, checks 0.4 s, ...` in the order things happen. The replica and batch
    times count from the pipeline's start, so they overlap `pipeline`."""
    return ", ".join(
        f"{label} {phases[name]:.1f} s" for name, label in PHASE_NAMES.items() if name in phases
    )


def _precision_line(manifest: dict[str, Any]) -> list[str]:
    """The vectors' precision when it is not float32 (and where int8 / uint8 ranges came from)."""
    precision = manifest.get("precision") or {}
    name = precision.get("name", "float32")
    if name == "float32":
        return []
    source = (manifest.get("calibration") or {}).get("source")
    return [f"  precision    {name}" + (f" (ranges: {source})" if source else "")]


def format_summary(manifest: dict[str, Any]) -> str:
    if manifest.get("nothing_to_do"):
        return _format_nothing_to_do(manifest)
    run = manifest["this_run"]
    skipped = f"{run['rows_skipped']:,} skipped as already done" + (
        " (Ray's 'rows ... written' line counts these too: they pass through the sink to be counted)"
        if run["rows_skipped"]
        else ""
    )
    lines = [
        f"qwen3-embed embed: {manifest['status']} in {manifest['wall_seconds']:.1f} s",
        f"  model        {manifest['model']} ({manifest['family']}, dim {manifest['dim']}, "
        f"{'normalized' if manifest['normalized'] else 'not normalized'})",
        f"  instruction  {manifest['instruction'] if manifest['instruction'] else '(none: documents)'}",
        f"  input        {manifest['inputs']['files']} file(s) ({', '.join(manifest['inputs']['formats'])}) "
        f"under {manifest['inputs']['root']}: {manifest['rows_in']:,} rows",
        f"  output       {manifest['output']}",
        *_precision_line(manifest),
        *_ids_line(manifest),
        f"  embedded     {manifest['rows_embedded']:,} rows (this run {run['rows_embedded']:,}; {skipped})",
    ]
    if manifest["rows_failed"]:
        lines.append(
            f"  failed       {manifest['rows_failed']:,} rows (this run {run['rows_failed']:,}) -> "
            f"{manifest['output'].rstrip('/')}/_errors"
        )
    else:
        lines.append("  failed       0 rows")
    if manifest["error_codes"]:
        reasons = ", ".join(
            f"{code} {count:,}" for code, count in list(manifest["error_codes"].items())[:4]
        )
        lines.append(f"               by code: {reasons}")
    lines += _corpus_lines(manifest)
    lines += [
        f"  tokens       {manifest['tokens']:,} in output ({run['tokens']:,} this run)",
        f"  throughput   {manifest['rows_per_second']:,.1f} rows/s, {manifest['tokens_per_second']:,.0f} tokens/s "
        f"over the whole run; pipeline {manifest['execute_seconds']:.1f} s "
        f"({manifest['num_replicas']} replica(s), {manifest['gpus_per_replica']:g} GPU each)",
    ]
    if manifest.get("phases"):
        lines.append(f"  start-up     {format_phases(manifest['phases'])}")
    lines += _checks(manifest)
    return "\n".join(lines)


def _format_nothing_to_do(manifest: dict[str, Any]) -> str:
    previous = manifest.get("done_by_run", {}).get("finished_at") or "an earlier run"
    lines = [
        f"qwen3-embed embed: nothing to do ({manifest['wall_seconds']:.1f} s): all "
        f"{manifest['rows_in']:,} input rows are already in OUTPUT",
        f"  output       {manifest['output']}",
        *_precision_line(manifest),
        *_ids_line(manifest),
        f"  unchanged    inputs and OUTPUT's files are as the run finished at {previous} left them; "
        "no replica was started",
        f"  embedded     {manifest['rows_embedded']:,} rows",
        f"  failed       {manifest['rows_failed']:,} rows"
        + (f" -> {manifest['output'].rstrip('/')}/_errors" if manifest["rows_failed"] else ""),
    ]
    if manifest.get("phases"):
        lines.append(f"  start-up     {format_phases(manifest['phases'])}")
    lines += _checks(manifest)
    return "\n".join(lines)


ID_SOURCES = {
    "given": "as given (--id-column)",
    "default": "the default: the input has an `id` column",
    "kept": "kept from the run that started OUTPUT",
}


def _ids_line(manifest: dict[str, Any]) -> list[str]:
    """Which ids the rows have (manifests from before the `id` default do not say)."""
    ids = manifest.get("ids")
    if not ids:
        return []
    if ids.get("column") is None:
        return ["  ids          derived from file and row (relative/path:row)"]
    how = ID_SOURCES.get(ids.get("source"), ids.get("source"))
    return [f"  ids          column {ids['column']!r} ({how})"]


def _checks(manifest: dict[str, Any]) -> list[str]:
    lines = []
    total = manifest["rows_embedded"] + manifest["rows_failed"]
    if manifest["consistent"]:
        lines.append(
            f"  check        ok: rows_in {manifest['rows_in']:,} = embedded + failed, no duplicate ids"
        )
    if manifest["duplicate_ids"]:
        lines.append(
            f"  check        FAILED: {manifest['duplicate_ids']:,} id(s) appear more than once in OUTPUT "
            "(repeated values in the id column?)"
        )
    if manifest["rows_in"] != total:
        lines.append(
            f"  check        FAILED: rows_in {manifest['rows_in']:,} but embedded + failed {total:,} "
            "(did the input change since OUTPUT was started?)"
        )
    return lines
