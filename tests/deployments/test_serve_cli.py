"""`qwen3-embed serve` as a user runs it: a subprocess with its own private Ray (2 CPUs), the
tiny model, an API key from an environment variable; then Ctrl-C (SIGINT) and a clean exit."""

from __future__ import annotations

import re
import signal

import httpx
import numpy as np
import pytest
from serve_support import (
    assert_openai_error,
    free_port,
    kill_serve_command,
    serve_processes,
    start_serve_command,
    wait_serving,
)

from deployments.ray_env import LATENCY_SWITCHES

KEY_VAR = "QWEN3_EMBED_TEST_CLI_KEYS"
KEY = "cli-key-abc"


def test_serve_command_serves_then_exits_cleanly_on_sigint(
    tiny_text_model_dir, tiny_text_embedder, tmp_path
):
    port = free_port()
    arguments = [
        "--model", str(tiny_text_model_dir), "--served-model-name", "tiny",
        "--port", str(port), "--num-cpus", "2", "--cpus-per-replica", "0.5",
        "--max-batch-size", "8", "--batch-wait-ms", "5", "--api-key-env", KEY_VAR,
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    proc = start_serve_command(arguments, log, {KEY_VAR: KEY})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_serving(proc, f"{base}/ready", log)
        assert_openai_error(
            httpx.post(f"{base}/v1/embeddings", json={"input": "x"}, timeout=30),
            401,
            "invalid_api_key",
        )
        response = httpx.post(
            f"{base}/v1/embeddings",
            json={"input": ["hello world", "serve cli"], "model": "tiny", "dimensions": 48},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        reference = tiny_text_embedder.embed(["hello world", "serve cli"], dim=48)
        rows = np.asarray([row["embedding"] for row in response.json()["data"]], dtype=np.float32)
        assert np.max(np.abs(rows - reference.embeddings.numpy())) <= 1e-5
        assert KEY not in log.read_text()  # keys are never logged
        # The private Ray runs Serve with the latency switches (deployments/ray_env.py), seen in
        # the replicas' own environments (ingress and model), and with Ray's Python proxy.
        replicas = serve_processes(proc, "ServeReplica:")
        assert len(replicas) == 2
        for replica in replicas:
            environment = replica.environ()
            for name, value in LATENCY_SWITCHES.items():
                assert environment.get(name) == value, name
            assert environment.get("RAY_SERVE_ENABLE_HA_PROXY", "0") == "0"

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, log.read_text()[-4000:]
        text = log.read_text()
        assert "shutting down" in text
        # A clean start and Ctrl-C print nothing misleading: no "new http_options will not be
        # applied" (they were: serve.start set them), no failed graceful_shutdown task, no
        # error-level line.
        assert "Connecting to existing Serve app" not in text
        assert "graceful_shutdown failed" not in text and "Traceback" not in text
        for line in text.splitlines():
            assert not re.match(r"^\[[^\]]* E \d+ \d+\]", line) and " ERROR " not in line, line
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{base}/health", timeout=2)  # the proxy went away with it
    finally:
        kill_serve_command(proc)
