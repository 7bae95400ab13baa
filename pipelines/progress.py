"""The job's own progress line, for runs that are not on a terminal.

Ray Data shows progress bars on a terminal; elsewhere (output to a file, CI, `ray job submit`)
it logs a multi-line block every 10 s. There the job prints one line instead, every
`progress_interval_s` (30 s by default), on stderr:

    qwen3-embed embed: 12,288 of ~50,000 rows (25%), 410 rows/s, ETA 1m32s, 12 errors

Rows are counted as they leave the embed stage (the run's ledger, see `ledger`); the total is
an estimate made before the run from the inputs' metadata (parquet footers, image and video
file counts, the line length of a text file's first 64 KiB), and is left out when the inputs
cannot tell (compressed text files). `--ray-progress` keeps Ray Data's own output instead.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .discovery import COMPRESSION_SUFFIXES, InputSet
from .rows import STATUS_ERROR, STATUS_OK, STATUS_SKIPPED

SAMPLE_BYTES = 64 * 1024
MAX_FOOTERS = 256  # parquet footers read for the estimate; more files: no estimate


def estimate_rows(inputs: InputSet) -> int | None:
    """About how many rows the inputs hold; None when they cannot tell cheaply."""
    parquet = [file for file in inputs.files if file.format == "parquet"]
    if len(parquet) > MAX_FOOTERS:
        return None
    total = 0
    line_lengths: dict[str, float] = {}  # format -> mean bytes a line, from its first file
    try:
        for file in inputs.files:
            if file.format in ("images", "videos"):  # one row per file
                total += 1
            elif file.format == "parquet":
                with inputs.fs.open_input_file(file.path) as handle:
                    total += pq.read_metadata(handle).num_rows
            elif file.path.lower().endswith(COMPRESSION_SUFFIXES):
                return None
            else:
                if file.format not in line_lengths:
                    line_lengths[file.format] = _mean_line_bytes(inputs.fs, file.path)
                total += round(file.size / line_lengths[file.format])
    except (OSError, ValueError):
        return None
    return total


def _mean_line_bytes(fs: pafs.FileSystem, path: str) -> float:
    with fs.open_input_stream(path) as stream:
        head = stream.read(SAMPLE_BYTES)
    return max(1.0, len(head) / max(1, head.count(b"\n")))


def progress_line(done: int, errors: int, elapsed_s: float, total: int | None) -> str:
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    parts = [f"{done:,} rows"]
    if total:
        share = min(done / total, 1.0)
        parts = [f"{done:,} of ~{total:,} rows ({share:.0%})"]
    parts.append(f"{rate:,.0f} rows/s")
    if total and rate > 0:
        parts.append(f"ETA {_duration(max(0.0, (total - done) / rate))}")
    parts.append(f"{errors:,} error{'s' if errors != 1 else ''}")
    return "qwen3-embed embed: " + ", ".join(parts)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class ProgressReporter:
    """Prints `progress_line` every `interval_s` on a daemon thread until `stop`. `counts()`
    returns the rows through the embed stage by status (the ledger's `progress`)."""

    def __init__(
        self,
        counts: Callable[[], dict[str, int]],
        total: int | None,
        interval_s: float,
        stream=None,
    ):
        self._counts, self._total, self._interval = counts, total, interval_s
        self._stream = stream or sys.stderr
        self._started = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qwen3-embed-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                counts = self._counts()
            except Exception:  # noqa: BLE001 - a missed line is no reason to stop the job
                continue
            done = sum(counts.get(key, 0) for key in (STATUS_OK, STATUS_ERROR, STATUS_SKIPPED))
            line = progress_line(
                done, counts.get(STATUS_ERROR, 0), time.monotonic() - self._started, self._total
            )
            print(line, file=self._stream, flush=True)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
