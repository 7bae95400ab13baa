"""`qwen3-embed serve` as a user runs it: a subprocess with its own private Ray (2 CPUs), the
tiny model, an API key from an environment variable; then Ctrl-C (SIGINT) and a clean exit."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_support import assert_openai_error, free_port

REPO = Path(__file__).resolve().parents[2]
KEY_VAR = "QWEN3_EMBED_TEST_CLI_KEYS"
KEY = "cli-key-abc"


def _wait_serving(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 240) -> None:
    """Until the command says it is serving (start-up over) and /ready answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited early with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if (
                "qwen3-embed: serving" in log.read_text()
                and httpx.get(url, timeout=2).status_code == 200
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"not ready after {timeout_s}s:\n{log.read_text()[-4000:]}")


def test_serve_command_serves_then_exits_cleanly_on_sigint(
    tiny_text_model_dir, tiny_text_embedder, tmp_path
):
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update({KEY_VAR: KEY, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    command = [
        sys.executable, "-m", "qwen3_embed", "serve",
        "--model", str(tiny_text_model_dir), "--served-model-name", "tiny",
        "--port", str(port), "--num-cpus", "2", "--cpus-per-replica", "0.5",
        "--max-batch-size", "8", "--batch-wait-ms", "5", "--api-key-env", KEY_VAR,
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        # Own session: if the test fails, the whole tree (driver, its Ray) is killed below.
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_serving(proc, f"{base}/ready", log)
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
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
