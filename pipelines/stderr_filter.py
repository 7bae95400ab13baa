"""Keep one known-benign line of Ray's C++ logging off the terminal of the batch jobs' commands
(`qwen3-embed embed` / `rerank`, `python -m pipelines.embed_corpus`); each installs it itself.

Every Ray Data job that uses an actor pool makes Ray's core worker (C++, writing straight to file
descriptor 2) log, at *error* level:

    [... E <pid> <tid>] core_worker.cc:NNNN: Actor with class name: 'MapWorker(MapBatches(...))'
    and ID: '...' has constructor arguments in the object store and max_restarts > 0. ...

Ray Data itself passes object refs (its data context, the map transformer) to the constructors
of the actors it restarts; nothing a user of this project does or can change causes or avoids
it (ray-project/ray#57733 for Ray Data, #53727 for the underlying restart limitation, both open
for Ray 2.60). A user reads an error-level line as a failure, so the commands drop exactly that line
and forwards everything else unchanged, byte for byte.

Because the line comes from C++, not from Python's `sys.stderr`, the filter sits on the file
descriptor: fd 2 becomes a pipe, and a forked filter process copies the pipe to the real stderr.
A process (not a thread) so that nothing written before a crash is lost: it drains the pipe
until every writer is gone, and it ignores Ctrl-C so it outlives the command's shutdown
messages. `QWEN3_EMBED_RAW_STDERR=1` turns the filter off.
"""

from __future__ import annotations

import os
import re
import signal
import sys

DISABLE_ENV = "QWEN3_EMBED_RAW_STDERR"
# Ray's C++ log prefix "[date time E pid tid] file:line: ", then the message for Ray Data's
# own actors only (their class names start with MapWorker(); ray-project/ray#57733).
BENIGN_LINES = (
    re.compile(
        rb"^\[[^\]]* E \d+ \d+\] core_worker\.cc:\d+: Actor with class name: 'MapWorker\("
        rb"[^']*' and ID: '[0-9a-f]+' has constructor arguments in the object store and "
        rb"max_restarts > 0\. "
    ),
)
HOLD_LIMIT = 64 * 1024  # a partial line longer than this is forwarded without waiting for "\n"


def is_benign(line: bytes) -> bool:
    return any(pattern.match(line) for pattern in BENIGN_LINES)


def install() -> bool:
    """Route this process's fd 2 (and its children's) through the filter. Returns False when
    turned off or where fork is unavailable; call it before any thread is started."""
    if os.environ.get(DISABLE_ENV) == "1" or not hasattr(os, "fork"):
        return False
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the filter process
        code = 0
        try:
            os.close(write_end)
            # Hold no other descriptor (a captured stdout would otherwise stay open after the
            # command exits); keep going through Ctrl-C and SIGTERM until the pipe's EOF.
            for fd in (0, 1):
                os.close(fd)
            os.closerange(3, read_end)
            os.closerange(read_end + 1, 1024)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            forward(read_end, 2)
        except BaseException:  # noqa: BLE001 - nowhere left to report to
            code = 1
        finally:
            os._exit(code)
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    return True


def forward(source: int, target: int) -> None:
    """Copy `source` to `target` until EOF, dropping benign lines. Partial lines go on at once
    (progress bars redraw with "\\r" and never end a line) unless they may be the start of a
    C++ log line, which Ray writes whole."""
    pending = b""
    while True:
        chunk = os.read(source, 65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        out = b"".join(line + b"\n" for line in lines if not is_benign(line))
        if pending and (not pending.startswith(b"[") or len(pending) > HOLD_LIMIT):
            out, pending = out + pending, b""
        if out and not _write_all(target, out):
            return
    if pending:
        _write_all(target, pending)


def _write_all(target: int, data: bytes) -> bool:
    view = memoryview(data)
    while view:
        try:
            written = os.write(target, view)
        except OSError:  # the real stderr is gone (closed terminal, reader exited)
            return False
        view = view[written:]
    return True
