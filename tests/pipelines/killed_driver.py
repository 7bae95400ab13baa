"""Killing a batch job's driver mid-run, as the resume tests do: wait until it has written its
first part file, and after the kill, until OUTPUT stops changing (the driver's Ray workers go
with it), so that what the test counts before the rerun is exactly what the rerun finds."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def wait_for_first_part(driver: subprocess.Popen, output: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not list(output.glob("part-*.parquet")):
        assert driver.poll() is None, "the job ended before any output was written"
        assert time.monotonic() < deadline, "no output file appeared"
        time.sleep(0.05)


def wait_until_output_settles(output: Path, timeout_s: float = 30.0) -> None:
    settled, last, deadline = 0, None, time.monotonic() + timeout_s
    while settled < 4 and time.monotonic() < deadline:
        files = sorted(path.name for path in output.rglob("part-*.parquet"))
        settled, last = (settled + 1, last) if files == last else (0, files)
        time.sleep(0.25)
    assert settled == 4, "OUTPUT kept changing after the driver was killed"
