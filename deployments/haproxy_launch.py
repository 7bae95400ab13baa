"""How `qwen3-embed serve` has Ray start HAProxy in a private Ray: through this file.

Ray's HAProxy mode runs the binary named by RAY_SERVE_HAPROXY_BINARY_PATH as
`BINARY -db -f CONFIG [reload args]`. A private Ray started by `qwen3-embed serve` names a
two-line script (`write_launcher`) that runs this file with the real binary, which then:

- for a loopback --host, rewrites the wildcard `bind`s of Ray's config (its HAProxy template binds
  the stats page and the Prometheus exporter as `bind *:PORT` and `bind :PORT`, on all
  interfaces, whatever --host says) to 127.0.0.1, so every port of the server stays local;
- asks the kernel to SIGTERM HAProxy when the Ray actor that started it dies, so a SIGKILLed
  `qwen3-embed serve` (whose private Ray goes with it) leaves no HAProxy holding the port;
- becomes HAProxy (`execv`: same pid and arguments, so Ray's process bookkeeping holds).

Standard library only, run as a script by path: it must start fast and import nothing of the
package (Ray's worker may have another working directory and import path).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import shlex
import signal
import stat
import sys
from pathlib import Path

# `bind :9101`, `bind *:8404`, `bind 0.0.0.0:PORT` (any options after the address kept).
WILDCARD_BIND = re.compile(
    r"^(?P<head>[ \t]*bind[ \t]+)(?:\*|0\.0\.0\.0)?:(?P<tail>\d+\b.*)$", re.M
)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
LOOPBACK_FLAG = "--loopback"


def loopback_binds(config: str) -> str:
    """`config` with every wildcard `bind` bound to 127.0.0.1 instead."""
    return WILDCARD_BIND.sub(r"\g<head>127.0.0.1:\g<tail>", config)


def config_file(arguments: list[str]) -> str | None:
    """The file after HAProxy's `-f`, if any."""
    for flag, value in zip(arguments, arguments[1:], strict=False):
        if flag == "-f":
            return value
    return None


def rewrite_to_loopback(path: str) -> None:
    """Rewrite `path` in place under Ray's own lock file (Ray writes the config under it)."""
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            text = Path(path).read_text()
            rewritten = loopback_binds(text)
            if rewritten != text:
                Path(path).write_text(rewritten)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def die_with_parent() -> None:
    """SIGTERM this process (HAProxy after the exec) when its parent dies (Linux; elsewhere
    Ray's mode has no bundled HAProxy and this file is not used)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def write_launcher(directory: Path, binary: str, loopback: bool) -> Path:
    """An executable script in `directory` for RAY_SERVE_HAPROXY_BINARY_PATH: runs this file with
    the interpreter running now and the real `binary`."""
    flag = f" {LOOPBACK_FLAG}" if loopback else ""
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))}"
    script = directory / "haproxy"
    script.write_text(f'#!/bin/sh\nexec {command}{flag} {shlex.quote(binary)} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def main(argv: list[str]) -> None:
    loopback = bool(argv) and argv[0] == LOOPBACK_FLAG
    if loopback:
        argv = argv[1:]
    if not argv:
        sys.exit(f"usage: {Path(__file__).name} [{LOOPBACK_FLAG}] HAPROXY_BINARY [ARGS...]")
    binary, arguments = argv[0], argv[1:]
    path = config_file(arguments)
    if loopback and path is not None:
        rewrite_to_loopback(path)
    die_with_parent()
    os.execv(binary, [binary, *arguments])


if __name__ == "__main__":
    main(sys.argv[1:])
