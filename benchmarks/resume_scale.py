"""Benchmark 5: what a rerun costs before it embeds again, at 1M and 10M rows already in OUTPUT.

`python -m benchmarks.resume_scale [--quick] [--sizes 1000000:1024,10000000:64] [--tmp /tmp]`
(or `python -m benchmarks.run --only resume`).

No model and no Ray: OUTPUT is written by the job's own sink (`EmbeddingSink.write`, the job's
layout, parquet footer records and all) from synthetic rows, as a job that was killed 90% of the
way through leaves it: whole input fragments done (files of `FRAGMENT_ROWS` rows, streamed into
part files of the job's default 8,192 rows), and `IN_FLIGHT` fragments half written, their
blocks interleaved in the last part files as concurrent read tasks leave them. Vectors are
random float32 of the given width.

Each design's scan then runs in a fresh process (so its peak RSS is its own), twice: once timed,
once under tracemalloc:

- `ids` (before): `resume.scan_output`, every id in OUTPUT as a 16-byte digest.
- `fragments` (after): `resume.scan_for_resume`, footers only, plus the ids of the part files
  that hold rows of an in-flight fragment.

"object-store bytes" is the digest array each read task's node fetches (`nbytes`; Ray stores a
numpy array as its buffer plus a small header, so the pickle-5 size is reported beside it). In
the job the scan runs as a Ray task, not in the driver; the driver receives the scan's small
result (the pickled size is reported) and keeps the fragment keys of its inputs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import pickle
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.fragments import PROVENANCE_KEY

FRAGMENT_ROWS = 100_000  # rows per input file (one read task, one fragment)
IN_FLIGHT = 4  # fragments half written when the run stopped (read tasks running at once)
ROWS_PER_FILE = 8192  # the job's default part size (JobConfig.rows_per_file)
BLOCK_ROWS = 1024  # the job's read block size: how in-flight fragments interleave
DONE_SHARE = 0.9
READ_CONFIG = {"root": "/corpus", "id_column": None, "text_column": "text", "image_column": None}
QUICK = {"sizes": [(20_000, 8)], "fragment_rows": 2_000, "in_flight": 2, "rows_per_file": 1024}
FULL = {
    "sizes": [(1_000_000, 1024), (1_000_000, 64), (10_000_000, 64)],
    "fragment_rows": FRAGMENT_ROWS,
    "in_flight": IN_FLIGHT,
    "rows_per_file": ROWS_PER_FILE,
}


def _log(message: str) -> None:
    print(f"   {message}", file=sys.stderr, flush=True)


def plan_fragments(rows: int, fragment_rows: int, in_flight: int) -> dict[str, Any]:
    """The synthetic job: how many input fragments, which are done, which are in flight."""
    in_flight_rows = in_flight * (fragment_rows // 2)
    done = max(0, (rows - in_flight_rows) // fragment_rows)
    total = max(done + in_flight, -(-int(rows / DONE_SHARE) // fragment_rows))
    return {"total": total, "done": done, "in_flight": in_flight, "fragment_rows": fragment_rows}


def fragment_files(count: int, fragment_rows: int) -> list[Any]:
    from pipelines.discovery import InputFile

    return [
        InputFile(
            path=f"/corpus/shard-{index:06d}.jsonl",
            relpath=f"shard-{index:06d}.jsonl",
            format="jsonl",
            size=fragment_rows * 200,
            mtime_ns=1_700_000_000_000_000_000 + index,
        )
        for index in range(count)
    ]


def _block(
    keys: list[str], fragment: int, start: int, stop: int, total: int | None, dim: int, rng
) -> pa.Table:
    """Rows start..stop of one fragment as the embed stage hands them to the sink."""
    from pipelines.rows import PROVENANCE_FIELDS, embedded_schema

    count = stop - start
    table = pa.table(
        {
            "id": [f"shard-{fragment:06d}.jsonl:{row}" for row in range(start, stop)],
            "status": pa.array(["ok"] * count),
            "error": pa.nulls(count, pa.string()),
            "code": pa.nulls(count, pa.string()),
            "num_tokens": pa.array(rng.integers(8, 512, count, dtype=np.int32)),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.standard_normal(count * dim, dtype=np.float32)), dim
            ),
        },
        schema=embedded_schema(dim),
    )
    totals = [None] * count
    if total is not None and stop == total:
        totals[-1] = total  # the fragment's last row carries its row count
    table = table.append_column(PROVENANCE_FIELDS[0], pa.array([keys[fragment]] * count))
    return table.append_column(PROVENANCE_FIELDS[1], pa.array(totals, pa.int64()))


def build_output(folder: Path, rows: int, dim: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Write OUTPUT as the killed job left it, with the job's sink; returns the plan."""
    from pipelines.fragments import fragment_key
    from pipelines.layout import schema_metadata
    from pipelines.sink import EmbeddingSink, SinkSettings

    plan = plan_fragments(rows, settings["fragment_rows"], settings["in_flight"])
    files = fragment_files(plan["total"], plan["fragment_rows"])
    keys = [fragment_key([file], READ_CONFIG) for file in files]
    folder.mkdir(parents=True)
    (folder / "_manifest.json").write_text(json.dumps({"run_id": "bench"}))
    metadata = schema_metadata("synthetic", dim, None, True, "text")
    sink = EmbeddingSink(
        SinkSettings(
            str(folder), (), dim, tuple(metadata.items()), settings["rows_per_file"], "bench"
        )
    )
    rng = np.random.default_rng(0)
    fragment_rows = plan["fragment_rows"]

    # The stream of blocks the sink saw: done fragments whole, then the in-flight ones' first
    # halves interleaved block by block.
    def blocks():
        for fragment in range(plan["done"]):
            for start in range(0, fragment_rows, BLOCK_ROWS):
                stop = min(start + BLOCK_ROWS, fragment_rows)
                yield _block(keys, fragment, start, stop, fragment_rows, dim, rng)
        half = fragment_rows // 2
        for start in range(0, half, BLOCK_ROWS):
            for fragment in range(plan["done"], plan["done"] + plan["in_flight"]):
                stop = min(start + BLOCK_ROWS, half)
                yield _block(keys, fragment, start, stop, fragment_rows, dim, rng)

    pending: list[pa.Table] = []
    pending_rows = written = 0
    for block in blocks():  # one write task per part file's worth of rows
        pending.append(block)
        pending_rows += block.num_rows
        if pending_rows >= settings["rows_per_file"]:
            written += sink.write(pending, ctx=None)["embedded"]
            pending, pending_rows = [], 0
    if pending:
        written += sink.write(pending, ctx=None)["embedded"]
    plan.update(rows_in_output=written, keys=keys)
    return plan


def _status_bytes(field: str) -> int:
    """VmRSS / VmHWM (peak RSS) of this process, from /proc (Linux)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Make VmHWM start again from the current RSS, so the peak is the scan's and not the
    imports' (Linux >= 4.0); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _measure(design: str, output: str, keys: list[str], traced: bool, queue) -> None:
    """In a fresh process: one scan, its time, peak memory and what it would ship."""
    from pipelines.resume import scan_for_resume, scan_output
    from pipelines.storage import resolve

    location = resolve(output)
    baseline = _status_bytes("VmRSS")
    peak_reset = _reset_peak_rss()
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    if design == "ids":
        digests, scan = scan_output(location)
        detail = {"ids_read": scan.rows_embedded + scan.rows_failed, "files": scan.files}
    else:
        digests, scan = scan_for_resume(location, keys)
        detail = {
            "ids_read": scan.ids_read,
            "files": scan.files,
            "files_read_by_id": scan.files_read_by_id,
            "done_fragments": len(scan.done_fragments),
            "phase_seconds": scan.seconds,
        }
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {"seconds": seconds, **detail}
    if traced:
        result["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    else:
        # None where the peak could not be reset: it would be the imports' peak, not the scan's.
        result["rss_peak_over_start_bytes"] = (
            _status_bytes("VmHWM") - baseline if peak_reset else None
        )
    result["object_store_bytes"] = int(digests.nbytes)
    result["object_store_pickled_bytes"] = len(pickle.dumps(digests, protocol=5))
    result["result_to_driver_bytes"] = len(pickle.dumps(scan, protocol=5))
    queue.put(result)


def _in_process(design: str, output: Path, keys: list[str], traced: bool) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(design, str(output), keys, traced, queue))
    process.start()
    result = queue.get(timeout=3600)
    process.join()
    return result


def _driver_keys_seconds(count: int, fragment_rows: int) -> float:
    """The driver's own share: the fragment key of every input file (it plans the read tasks)."""
    from pipelines.fragments import fragment_key

    files = fragment_files(count, fragment_rows)
    started = time.perf_counter()
    for file in files:
        fragment_key([file], READ_CONFIG)
    return time.perf_counter() - started


def measure(rows: int, dim: int, settings: dict[str, Any], tmp: Path) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="resume-scale-", dir=tmp))
    try:
        started = time.perf_counter()
        plan = build_output(folder / "out", rows, dim, settings)
        write_seconds = time.perf_counter() - started
        keys = plan.pop("keys")
        parts = sorted((folder / "out").rglob("part-*.parquet"))
        on_disk = sum(path.stat().st_size for path in parts)
        records = [len(pq.read_metadata(path).metadata[PROVENANCE_KEY]) for path in parts]
        _log(f"{rows:,} rows x {dim}: wrote {on_disk / 2**30:.2f} GiB in {write_seconds:.0f} s")
        entry: dict[str, Any] = {
            "rows": plan["rows_in_output"],
            "dim": dim,
            "bytes_on_disk": on_disk,
            "plan": {k: v for k, v in plan.items() if k != "rows_in_output"},
            "rows_per_file": settings["rows_per_file"],
            "part_files": len(parts),
            "footer_record_bytes_mean": sum(records) / len(records),
            "footer_record_bytes_max": max(records),
            "driver_fragment_keys_seconds": _driver_keys_seconds(
                plan["total"], plan["fragment_rows"]
            ),
        }
        for design in ("ids", "fragments"):
            timed = _in_process(design, folder / "out", keys, traced=False)
            traced = _in_process(design, folder / "out", keys, traced=True)
            timed["tracemalloc_peak_bytes"] = traced["tracemalloc_peak_bytes"]
            timed["seconds_under_tracemalloc"] = traced["seconds"]
            entry[design] = timed
            _log(f"  {design}: {json.dumps(timed)}")
        return entry
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _linear(points: list[tuple[float, float]], at: float) -> float:
    """The line through the smallest and largest of `points` (x, y) at `at`; through the origin
    when there is one point."""
    points = sorted(points)
    (x0, y0), (x1, y1) = points[0], points[-1]
    if x1 == x0:
        return y1 * at / x1
    return y0 + (y1 - y0) * (at - x0) / (x1 - x0)


def extrapolate(measured: list[dict[str, Any]], rows_done: int = 900_000_000) -> dict[str, Any]:
    """The measured costs, on a line through the smallest and largest measurement of the largest
    one's vector width, at `rows_done` rows in OUTPUT: an extrapolation, not a measurement. The
    fragments design's id read is the in-flight rows, which do not grow with OUTPUT: the line's
    intercept carries it, and its per-row cost is given apart so that other in-flight sizes can
    be worked out."""
    largest = max(measured, key=lambda entry: entry["rows"])
    same = [entry for entry in measured if entry["dim"] == largest["dim"]]

    def at(design: str, key: str) -> float:
        return _linear([(entry["rows"], entry[design][key]) for entry in same], rows_done)

    fragments = largest["fragments"]
    footers = fragments["phase_seconds"]["list"] + fragments["phase_seconds"]["footers"]
    return {
        "rows_done": rows_done,
        "from_rows": sorted({entry["rows"] for entry in same}),
        "dim": largest["dim"],
        "ids": {
            "seconds": at("ids", "seconds"),
            "scan_peak_bytes": at("ids", "tracemalloc_peak_bytes"),
            "object_store_bytes": at("ids", "object_store_bytes"),
        },
        "fragments": {
            "seconds": at("fragments", "seconds"),
            "scan_peak_bytes": at("fragments", "tracemalloc_peak_bytes"),
            "object_store_bytes": at("fragments", "object_store_bytes"),
            "result_to_driver_bytes": at("fragments", "result_to_driver_bytes"),
            "part_files": rows_done / largest["rows_per_file"],
        },
        "per_unit": {
            "footer_seconds_per_part_file": footers / max(fragments["files"], 1),
            "id_check_seconds_per_in_flight_row": fragments["phase_seconds"]["ids"]
            / max(fragments["ids_read"], 1),
            "object_store_bytes_per_in_flight_row": fragments["object_store_bytes"]
            / max(fragments["ids_read"], 1),
            "ids_design_seconds_per_row": largest["ids"]["seconds"] / largest["rows"],
        },
    }


def run(
    device: Any = None,
    quick: bool = False,
    sizes: list[tuple[int, int]] | None = None,
    tmp: Path | None = None,
) -> dict[str, Any]:
    """`benchmarks.run`'s entry point (`device` is unused: nothing here runs a model)."""
    from .common import row

    settings = dict(QUICK if quick else FULL)
    sizes = sizes or settings["sizes"]
    tmp = tmp or Path(tempfile.gettempdir())
    measured = [measure(rows, dim, settings, tmp) for rows, dim in sizes]
    projection = extrapolate(measured)
    rows_out = []
    for entry in measured:
        ids, fragments = entry["ids"], entry["fragments"]
        rows_out.append(
            row(
                f"resume scan, {entry['rows']:,} rows done (dim {entry['dim']}): ids → fragments",
                f"{ids['seconds']:.1f} s → {fragments['seconds']:.1f} s; scan peak "
                f"{ids['tracemalloc_peak_bytes'] / 2**20:.0f} → "
                f"{fragments['tracemalloc_peak_bytes'] / 2**20:.0f} MiB; object store "
                f"{ids['object_store_bytes'] / 2**20:.0f} → "
                f"{fragments['object_store_bytes'] / 2**20:.1f} MiB",
                "n/a (measured)",
                None,
            )
        )
    after = projection["fragments"]
    rows_out.append(
        row(
            "extrapolated to 900M rows done (line through "
            f"{', '.join(f'{n:,}' for n in projection['from_rows'])} rows; not measured)",
            f"fragments: {after['seconds']:.0f} s scan, "
            f"{after['scan_peak_bytes'] / 2**20:.0f} MiB scan peak, "
            f"{after['object_store_bytes'] / 2**20:.0f} MiB object store "
            f"(ids design: {projection['ids']['seconds']:.0f} s, "
            f"{projection['ids']['object_store_bytes'] / 2**30:.1f} GiB)",
            "< 120 s, < 1 GiB",
            after["seconds"] < 120 and after["scan_peak_bytes"] < 2**30,
        )
    )
    return {
        "benchmark": "resume_scale",
        "quick": quick,
        "settings": {k: v for k, v in settings.items() if k != "sizes"},
        "measured": measured,
        "extrapolated_1b_90pct": projection,
        "rows": rows_out,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resume_scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument(
        "--sizes", default=None, help="rows:dim,... (default 1000000:1024,1000000:64,10000000:64)"
    )
    parser.add_argument("--tmp", type=Path, default=None, help="where OUTPUT is written (deleted)")
    parser.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    args = parser.parse_args(argv)
    sizes = (
        [tuple(int(part) for part in item.split(":")) for item in args.sizes.split(",")]
        if args.sizes
        else None
    )
    result = run(quick=args.quick, sizes=sizes, tmp=args.tmp)  # type: ignore[arg-type]
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
