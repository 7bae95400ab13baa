"""Which run is writing OUTPUT, and whether it is still alive.

A run claims OUTPUT by writing `_manifest.json` with status "running", its `run_id` and a
`writer` record (host, driver pid and its start time, a heartbeat refreshed every
`HEARTBEAT_S`). A second job over the same OUTPUT checks that record before it starts a cluster:
while the writer lives it is refused (exit code 2); a writer that is gone (killed, crashed) is
taken over at once on the same host (its pid no longer runs), and after `STALE_AFTER_S` without
a heartbeat from another host. Writers that lose OUTPUT anyway stop at their next write
(`sink.StaleWriterError`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from qwen3_embed.errors import Qwen3EmbedError

HEARTBEAT_S = 15.0
STALE_AFTER_S = 4 * HEARTBEAT_S


class OutputBusyError(Qwen3EmbedError, ValueError):
    """Another live run is writing OUTPUT (a refusal before any cluster: exit code 2)."""

    code = "output_busy"


def _process_started(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), None when no such process runs."""
    try:
        import psutil  # a dependency of Ray

        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except Exception:  # noqa: BLE001 - NoSuchProcess, AccessDenied, no psutil: treat as gone
        return None


def writer_record() -> dict[str, Any]:
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "pid_started": _process_started(pid),
        "heartbeat_at": time.time(),
    }


def live_writer(manifest: dict[str, Any] | None) -> str | None:
    """Why OUTPUT is still being written by the run `manifest` names; None when it is free."""
    if not manifest or manifest.get("status") != "running":
        return None
    writer = manifest.get("writer")
    if not isinstance(writer, dict):
        return None  # written before writers were recorded: cannot tell, take it over
    run = f"run {manifest.get('run_id')} (started {manifest.get('started_at')})"
    if writer.get("host") == socket.gethostname():
        started = _process_started(int(writer.get("pid", -1)))
        recorded = writer.get("pid_started")
        if started is not None and (recorded is None or abs(started - recorded) < 1.0):
            return f"{run} is writing it: its driver, pid {writer['pid']} on this host, still runs"
        return None
    age = time.time() - float(writer.get("heartbeat_at", 0))
    if age < STALE_AFTER_S:
        return (
            f"{run} is writing it from host {writer.get('host')!r} (last heartbeat {age:.0f} s "
            f"ago; a run that stopped is taken over {STALE_AFTER_S:.0f} s after its last one)"
        )
    return None


class Heartbeat:
    """Calls `beat` every `HEARTBEAT_S` on a daemon thread until `stop`."""

    def __init__(self, beat: Callable[[], None], interval_s: float = HEARTBEAT_S):
        self._beat, self._interval = beat, interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qwen3-embed-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            # A missed beat only makes a takeover sooner.
            with contextlib.suppress(Exception):
                self._beat()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
