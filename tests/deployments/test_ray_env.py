"""The private Ray's environment (deployments/ray_env.py): the switches per HTTP proxy and
host, free ports for HAProxy, the user's own values win."""

from __future__ import annotations

import pytest


# ------------------------------------------------------------- the private Ray's environment
def test_serve_environment_per_http_proxy():
    from deployments.ray_env import (
        HAPROXY,
        HAPROXY_PORT_VARIABLES,
        LATENCY_SWITCHES,
        LOOPBACK_NODE,
        serve_environment,
    )

    # Served on loopback (the default host): Ray's single-machine mode binds all its ports there.
    assert serve_environment("ray") == {**LATENCY_SWITCHES, **LOOPBACK_NODE}
    assert serve_environment("ray", "::1") == serve_environment("ray", "localhost")
    assert serve_environment("ray", "127.0.0.2") == {**LATENCY_SWITCHES, **LOOPBACK_NODE}
    # Served beyond this machine: Ray's own addresses (a cluster of one node may grow).
    assert serve_environment("ray", "0.0.0.0") == LATENCY_SWITCHES
    assert serve_environment("ray", "192.0.2.7") == LATENCY_SWITCHES
    ports = iter((41001, 41002, 41003))
    haproxy = serve_environment("haproxy", pick_port=lambda: next(ports))
    assert haproxy == {
        **LATENCY_SWITCHES,
        **LOOPBACK_NODE,
        **HAPROXY,
        **dict(zip(HAPROXY_PORT_VARIABLES, ("41001", "41002", "41003"), strict=True)),
    }
    # Real free ports: distinct, none of Ray's fixed defaults.
    chosen = [serve_environment("haproxy")[name] for name in HAPROXY_PORT_VARIABLES]
    assert all(port.isdigit() and port not in {"8500", "8404", "9101"} for port in chosen)
    with pytest.raises(ValueError, match="http proxy must be one of ray, haproxy"):
        serve_environment("nginx")  # type: ignore[arg-type]


def test_apply_environment_lets_the_users_values_win():
    from deployments.ray_env import apply_environment, serve_environment

    environ = {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}
    applied = apply_environment(serve_environment("ray"), environ)
    assert applied["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "1"  # the user's
    assert environ["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"  # ours, where unset
    with pytest.raises(ValueError, match="needs RAY_SERVE_ENABLE_HA_PROXY=1"):
        apply_environment(serve_environment("haproxy"), {"RAY_SERVE_ENABLE_HA_PROXY": "0"})
