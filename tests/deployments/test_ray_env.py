"""The private Ray's environment (deployments/ray_env.py): the switches per HTTP proxy and
host, free ports for HAProxy, the user's own values win."""

from __future__ import annotations

from pathlib import Path

import pytest


# ------------------------------------------------------------- the private Ray's environment
def test_serve_environment_per_http_proxy(tmp_path):
    from deployments.ray_env import (
        HAPROXY,
        HAPROXY_PORT_VARIABLES,
        LATENCY_SWITCHES,
        LOOPBACK_NODE,
        PRIVATE_HAPROXY_DRAIN,
        RESERVED_PORTS,
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
    haproxy = serve_environment("haproxy", pick_port=lambda: next(ports), launcher_dir=tmp_path)
    launcher = tmp_path / "haproxy"
    assert haproxy == {
        **LATENCY_SWITCHES,
        **LOOPBACK_NODE,
        **HAPROXY,
        **PRIVATE_HAPROXY_DRAIN,
        **dict(zip(HAPROXY_PORT_VARIABLES, ("41001", "41002", "41003"), strict=True)),
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(launcher),
    }
    assert "--loopback" in launcher.read_text()  # loopback host: HAProxy's own ports rebound
    serve_environment("haproxy", "0.0.0.0", launcher_dir=tmp_path)
    assert "--loopback" not in launcher.read_text()
    # Real free ports: distinct, none of Ray's fixed defaults.
    chosen = [
        serve_environment("haproxy", launcher_dir=tmp_path)[name] for name in HAPROXY_PORT_VARIABLES
    ]
    assert all(port.isdigit() and port not in {"8500", "8404", "9101"} for port in chosen)
    # Below the kernel's ephemeral range: no process is handed one before HAProxy binds it.
    assert all(int(port) in RESERVED_PORTS for port in chosen), chosen
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert RESERVED_PORTS.stop <= low
    with pytest.raises(ValueError, match="http proxy must be ray or haproxy"):
        serve_environment("nginx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs launcher_dir"):
        serve_environment("haproxy")  # nowhere to write its launcher


def test_auto_http_proxy_is_haproxy_for_a_private_ray_where_ray_ships_it(monkeypatch):
    from deployments import ray_env

    assert ray_env.haproxy_binary() is not None  # ray[serve] on Linux (this machine, CI)
    assert ray_env.resolve_http_proxy("auto", private=True, environ={}) == "haproxy"
    assert ray_env.resolve_http_proxy("auto", private=False, environ={}) == "ray"
    # The user's own switch wins over auto (not over an explicit --http-proxy haproxy).
    off = {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    assert ray_env.resolve_http_proxy("auto", private=True, environ=off) == "ray"
    assert ray_env.resolve_http_proxy("haproxy", private=True, environ=off) == "haproxy"
    assert ray_env.resolve_http_proxy("ray", private=True, environ={}) == "ray"
    # Where Ray ships no HAProxy (macOS, Windows): Ray's proxy; an explicit request is refused.
    monkeypatch.setattr(ray_env, "haproxy_binary", lambda: None)
    assert ray_env.resolve_http_proxy("auto", private=True, environ={}) == "ray"


def test_apply_environment_lets_the_users_values_win(tmp_path):
    from deployments.ray_env import apply_environment, serve_environment

    environ = {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}
    applied = apply_environment(serve_environment("ray"), environ)
    assert applied["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "1"  # the user's
    assert environ["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"  # ours, where unset
    with pytest.raises(ValueError, match="needs RAY_SERVE_ENABLE_HA_PROXY=1"):
        apply_environment(
            serve_environment("haproxy", launcher_dir=tmp_path), {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
        )
