"""Resume: the output folder is its own checkpoint.

A rerun of the same job drops the input fragments that OUTPUT already holds whole, known from the
part files' footers without reading an id (see `fragments`); it reads the ids of the part files
that hold rows of any other fragment (what was in flight when the last run stopped, and files
without a record), and the read stage marks those rows `skipped` before any work is spent on
them. Only whole files count (they are written atomically, see `layout`), so a killed job's
half-finished work is simply redone.

Ids are compared by 128-bit BLAKE2b digests kept in one sorted numpy array: 16 bytes per row
read by id, shared zero-copy through Ray's object store by every read task, looked up with a binary
search. (Ray Data's own `CheckpointConfig` keeps a second copy of the ids elsewhere and offers
exactly-once only for its built-in file sinks; see docs/batch-job.md, "Resume".)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from qwen3_embed.errors import Qwen3EmbedError

from .fragments import done_fragments, needs_id_check, parse_provenance
from .identity import IDENTITY_DEFAULTS, identity_differences
from .layout import ERRORS_DIR, MANIFEST_FILE, TMP_DIR, identity_from_metadata, is_part_file
from .rows import FRAGMENT_COLUMN, FRAGMENT_ROWS_COLUMN, STATUS_SKIPPED
from .storage import Location, list_files, read_bytes

DIGEST_DTYPE = "S16"


def id_digests(ids: Sequence[str]) -> np.ndarray:
    """(N,) 16-byte digests; collisions are negligible (~1e-20 at a billion ids)."""
    return np.array(
        [
            hashlib.blake2b(row_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            for row_id in ids
        ],
        dtype=DIGEST_DTYPE,
    )


class DoneSet:
    """Sorted unique digests of the ids already written."""

    def __init__(self, sorted_digests: np.ndarray):
        self.digests = sorted_digests

    def __len__(self) -> int:
        return len(self.digests)

    def contains(self, ids: Sequence[str]) -> np.ndarray:
        if not len(self.digests) or not len(ids):
            return np.zeros(len(ids), dtype=bool)
        wanted = id_digests(ids)
        positions = np.searchsorted(self.digests, wanted)
        found = positions < len(self.digests)
        found[found] = self.digests[positions[found]] == wanted[found]
        return found


def mark_skipped(table: pa.Table, done: DoneSet | None) -> pa.Table:
    """Rows whose id is done become `skipped` and lose their payload (only the id travels on,
    so the sink can count them)."""
    if done is None or not len(done):
        return table
    mask = pa.array(done.contains(table.column("id").to_pylist()))
    if not pc.any(mask).as_py():
        return table
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if name == "status":
            column = pc.if_else(mask, pa.scalar(STATUS_SKIPPED), column)
        elif name not in ("id", FRAGMENT_COLUMN, FRAGMENT_ROWS_COLUMN):  # provenance is no payload
            column = pc.if_else(mask, pa.scalar(None, column.type), column)
        columns[name] = column
    return pa.table(columns, schema=table.schema)


# --------------------------------------------------------------------------- output scan
@dataclass
class OutputScan:
    """What OUTPUT holds, counted from its committed files."""

    rows_embedded: int = 0
    rows_failed: int = 0
    tokens: int = 0
    files: int = 0
    duplicate_ids: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)


def part_files(output: Location) -> tuple[list[str], list[str]]:
    """(vector files, error files) that are complete, in name order."""
    vectors = sorted(
        info.path for info in list_files(output, recursive=False) if is_part_file(info.base_name)
    )
    errors = sorted(
        info.path
        for info in list_files(output.child(ERRORS_DIR), recursive=False)
        if is_part_file(info.base_name)
    )
    return vectors, errors


def scan_output(output: Location) -> tuple[np.ndarray, OutputScan]:
    """Sorted unique digests of every id in OUTPUT, and the counts. Reads one file at a time, so
    memory is the digests (16 bytes a row) plus one file."""
    vectors, errors = part_files(output)
    scan = OutputScan(files=len(vectors) + len(errors))
    digests: list[np.ndarray] = []
    codes: Counter[str] = Counter()
    for path in vectors:
        table = pq.read_table(path, filesystem=output.fs, columns=["id", "num_tokens"])
        scan.rows_embedded += table.num_rows
        scan.tokens += int(pc.sum(table.column("num_tokens")).as_py() or 0)
        digests.append(id_digests(table.column("id").to_pylist()))
    for path in errors:
        table = pq.read_table(path, filesystem=output.fs, columns=["id", "code"])
        scan.rows_failed += table.num_rows
        codes.update(table.column("code").to_pylist())
        digests.append(id_digests(table.column("id").to_pylist()))
    scan.error_codes = dict(codes.most_common())
    if not digests:
        return np.array([], dtype=DIGEST_DTYPE), scan
    merged = np.sort(np.concatenate(digests))
    unique = np.unique(merged)  # sorted too
    scan.duplicate_ids = int(len(merged) - len(unique))
    return unique, scan


# ------------------------------------------------------------------ resume by fragment
# Footers are tiny reads: on object stores their latency, not bandwidth, is the cost, so many
# run at once (pyarrow releases the GIL while it waits); a local disk gains little from more.
FOOTER_READERS = {"local": 8, "remote": 64}


@dataclass
class ResumeScan:
    """What a rerun found in OUTPUT before it starts: the fragments it can drop whole, and what
    it read by id for the rest."""

    done_fragments: dict[str, int] = field(default_factory=dict)  # {fragment key: rows}
    done_documents: int = 0  # documents of those fragments (their rows, unless chunked)
    done_chunks: int = 0  # chunk rows of those fragments (chunked jobs)
    rows_embedded: int = 0
    rows_failed: int = 0
    files: int = 0
    files_read_by_id: int = 0
    ids_read: int = 0  # rows whose ids were read (those in files needing an id check)
    seconds: dict[str, float] = field(default_factory=dict)  # listing, footers, ids


def read_records(output: Location, paths: Sequence[str]) -> list[tuple[int, dict | None]]:
    """(rows, provenance record or None) of each part file, from its parquet footer alone."""
    from concurrent.futures import ThreadPoolExecutor

    def footer(path: str) -> tuple[int, dict | None]:
        metadata = pq.read_metadata(path, filesystem=output.fs)
        return metadata.num_rows, parse_provenance(metadata.metadata)

    if len(paths) < 2:
        return [footer(path) for path in paths]
    readers = FOOTER_READERS["local" if output.is_local else "remote"]
    with ThreadPoolExecutor(min(readers, len(paths))) as pool:
        return list(pool.map(footer, paths))


def scan_for_resume(output: Location, wanted: Sequence[str]) -> tuple[np.ndarray, ResumeScan]:
    """The fragments among `wanted` (this run's fragment keys) that OUTPUT holds whole, from the
    part files' footers; and the sorted unique digests of the ids in every part file that holds
    a row of any other fragment or has no record (see `fragments`). Memory: the records (a few
    keys per file) plus 16 bytes per row read by id."""
    mark = time.perf_counter()
    vectors, errors = part_files(output)
    paths = vectors + errors
    listed = time.perf_counter()
    records = read_records(output, paths)
    done = done_fragments((record for _, record in records), set(wanted))
    footers = time.perf_counter()
    totals: dict[str, int] = {}
    chunks: Counter[str] = Counter()
    for _, record in records:
        totals.update(record["totals"] if record else {})
        chunks.update((record or {}).get("chunks", {}))
    scan = ResumeScan(
        done_fragments=done,
        done_documents=sum(totals[key] for key in done),
        done_chunks=sum(chunks[key] for key in done),
        files=len(paths),
    )
    scan.rows_embedded = sum(rows for rows, _ in records[: len(vectors)])
    scan.rows_failed = sum(rows for rows, _ in records[len(vectors) :])
    digests: list[np.ndarray] = []
    for path, (rows, record) in zip(paths, records, strict=True):
        if not needs_id_check(record, done):
            continue
        table = pq.read_table(path, filesystem=output.fs, columns=["id"])
        digests.append(id_digests(table.column("id").to_pylist()))
        scan.files_read_by_id += 1
        scan.ids_read += rows
    unique = np.unique(np.concatenate(digests)) if digests else np.array([], dtype=DIGEST_DTYPE)
    scan.seconds = {
        "list": listed - mark,
        "footers": footers - listed,
        "ids": time.perf_counter() - footers,
    }
    return unique, scan


# ---------------------------------------------------------------------- nothing to do
def input_fingerprint(files: Sequence[object], read_config: dict[str, object]) -> str | None:
    """A digest of every input file's relative path, size and modification time, and of the
    settings that decide row ids; None when some file's modification time is unknown (then a
    rerun cannot tell unchanged inputs from changed ones without reading them)."""
    entries = []
    for file in files:
        if getattr(file, "mtime_ns", None) is None:
            return None
        entries.append([file.relpath, file.format, file.size, file.mtime_ns])  # type: ignore[attr-defined]
    payload = json.dumps({"files": entries, "read": read_config}, sort_keys=True)
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def output_fingerprint(output: Location) -> str:
    """A digest of OUTPUT's committed part files (names and sizes). Part names are digests of
    their ids (see `layout`), so an unchanged listing means unchanged ids."""
    entries = sorted(
        [folder, info.base_name, info.size]
        for folder, location in (("", output), (ERRORS_DIR, output.child(ERRORS_DIR)))
        for info in list_files(location, recursive=False)
        if is_part_file(info.base_name)
    )
    return hashlib.blake2b(json.dumps(entries).encode(), digest_size=16).hexdigest()


# What a "nothing to do" rerun copies from the last run's manifest (see
# `manifest.nothing_to_do_manifest`, `JobResult`), with `output`: without them OUTPUT is
# counted again by a full run.
COUNT_FIELDS = ("rows_in", "rows_embedded", "rows_failed", "tokens", "duplicate_ids")


def nothing_to_do(previous: dict | None, inputs: str | None, output: Location) -> bool:
    """True when the last run over OUTPUT completed with every input row in it, and neither the
    inputs nor OUTPUT's files changed since: a rerun would read every row only to skip it. The
    caller has checked the job's identity (`check_output`)."""
    if not previous or inputs is None:
        return False
    recorded = previous.get("inputs")
    return (
        previous.get("status") == "complete"
        and previous.get("consistent") is True
        and all(type(previous.get(name)) is int for name in COUNT_FIELDS)
        and isinstance(previous.get("output"), str)
        and isinstance(recorded, dict)
        and recorded.get("fingerprint") == inputs
        and previous.get("output_fingerprint") == output_fingerprint(output)
    )


# ----------------------------------------------------------------------- output identity
class OutputMismatchError(Qwen3EmbedError, ValueError):
    """OUTPUT already holds something this job must not add to."""

    code = "output_mismatch"


# Manifest fields that are JSON objects when present (the checks read into them).
MANIFEST_OBJECTS = ("identity", "config", "inputs", "ids")


def read_manifest(output: Location) -> dict | None:
    """OUTPUT's `_manifest.json`, or None when there is none. A damaged one (not JSON, not an
    object, or one of `MANIFEST_OBJECTS` not an object) is refused: it cannot say which job
    wrote OUTPUT."""
    location = output.child(MANIFEST_FILE)
    if location.fs.get_file_info(location.path).type != pafs.FileType.File:
        return None
    try:
        manifest = json.loads(read_bytes(location))
    except ValueError as error:  # also bytes that are not UTF-8
        problem = f"is not JSON ({error})"
    else:
        if not isinstance(manifest, dict):
            problem = f"holds a JSON {type(manifest).__name__}, not an object"
        else:
            wrong = [
                key
                for key in MANIFEST_OBJECTS
                if manifest.get(key) is not None and not isinstance(manifest[key], dict)
            ]
            if not wrong:
                return manifest
            problem = f"has {', '.join(repr(key) for key in wrong)} that are not JSON objects"
    raise OutputMismatchError(
        f"OUTPUT {output.uri()}: its {MANIFEST_FILE} {problem}, so which job wrote OUTPUT is "
        "unknown; restore the file, or use a new OUTPUT folder"
    )


def output_entries(output: Location) -> set[str] | None:
    """The names in OUTPUT (None when it does not exist yet), after refusing an OUTPUT that is a
    file or holds files no job of ours writes (shared by the embedding and rerank jobs)."""
    info = output.fs.get_file_info(output.path)
    if info.type == pafs.FileType.NotFound:
        return None
    if info.type != pafs.FileType.Directory:
        raise OutputMismatchError(f"OUTPUT {output.uri()} is a file; it must be a folder")
    entries = output.fs.get_file_info(pafs.FileSelector(output.path, recursive=False))
    names = {entry.base_name for entry in entries}
    foreign = sorted(
        name
        for name in names
        if not (is_part_file(name) or name in (ERRORS_DIR, MANIFEST_FILE, TMP_DIR))
    )
    if foreign:
        raise OutputMismatchError(
            f"OUTPUT {output.uri()} is not empty and holds files this job did not write ({', '.join(foreign[:5])}); "
            "choose an empty or new folder"
        )
    return names


def check_output(output: Location, identity: dict[str, object]) -> dict | None:
    """Refuse a non-empty OUTPUT written by a different job (any field of `identity`, see
    `identity.job_identity`), or holding files that are not ours. Returns the existing manifest,
    if any."""
    if output_entries(output) is None:
        return None
    manifest = read_manifest(output)
    existing = manifest.get("identity") if manifest else None
    if existing is None:
        vectors, errors = part_files(output)
        if vectors:
            existing = identity_from_metadata(
                pq.read_schema(vectors[0], filesystem=output.fs).metadata
            )
        if existing is None and (vectors or errors):
            raise OutputMismatchError(
                f"OUTPUT {output.uri()} holds part files without a manifest or model metadata; "
                "cannot tell which job wrote them, so refusing to add to it"
            )
    if existing is not None:
        differences = identity_differences(existing, identity, IDENTITY_DEFAULTS)
        if differences:
            raise OutputMismatchError(
                f"OUTPUT {output.uri()} already holds embeddings from a different job: {'; '.join(differences)}. "
                "Use a new OUTPUT folder, or delete this one to start over."
            )
    return manifest
