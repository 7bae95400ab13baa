"""What docs/cluster.md tells a cluster user to type, run once against a real head: `ray
get-auth-token --generate` and `ray start --head` on 127.0.0.1 (free ports, its own temp dir and
HOME so its token is its own), then

- `ray job submit` without the cluster's token fails with Ray's token-authentication error,
- with `RAY_AUTH_MODE=token` and `RAY_AUTH_TOKEN=$(ray get-auth-token)` it runs the batch job
  with a `--working-dir` runtime environment, polled to success, and the output is checked,
- the shipped Serve YAML (`cluster_configs/serve/text.yaml`, only its model swapped for a tiny
  offline one, GPUs for CPUs and the port for a free one) goes up with `serve deploy` and answers
  `/v1/embeddings`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pyarrow.dataset as pads
import pytest
import yaml
from serve_support import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(argv: list[str], env: dict[str, str], timeout: float = 300, **kwargs):
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head started the way a user starts one, stopped at the end."""
    home = tmp_path_factory.mktemp("home")
    # Ray's socket paths must stay short: a temp dir right under /tmp.
    temp_dir = tempfile.mkdtemp(prefix="q3h-", dir="/tmp")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RAY_") or key == "RAY_USAGE_STATS_ENABLED"
    }
    env.update(
        HOME=str(home),
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        RAY_USAGE_STATS_ENABLED="0",
        # The Serve YAML reads API keys from the nodes' environment (docs/cluster.md: "on every node").
        QWEN3_EMBED_API_KEYS="key1",
    )
    # As docs/cluster.md says: make the cluster's token first, so the head starts with token
    # authentication (`ray start --head` turns it on when a token exists, as it does on any
    # machine where a local `ray.init()` has run once).
    generated = _run(["ray", "get-auth-token", "--generate"], env)
    assert generated.returncode == 0, generated.stderr[-2000:]
    gcs_port, dashboard_port = free_port(), free_port()
    # Every port chosen free: the test session's own local Ray holds Ray's default agent ports.
    agent_ports = [
        f"--{flag}={free_port()}"
        for flag in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
            "metrics-export-port", "ray-client-server-port", "node-manager-port",
            "object-manager-port",
        )
    ]  # fmt: skip
    # `--block` keeps `ray start` in the foreground and makes it stop its own processes when it
    # is told to: `ray stop` would kill every Ray on the machine, the test session's included.
    log = open(tmp_path_factory.mktemp("head-log") / "head.log", "w+")  # noqa: SIM115
    head_process = subprocess.Popen(
        [
            "ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            f"--port={gcs_port}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}", "--include-dashboard=true", "--num-cpus=2",
            f"--temp-dir={temp_dir}", *agent_ports,
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_dashboard(address, head_process, log, timeout_s=180)
        token = _run(["ray", "get-auth-token"], env)
        assert token.returncode == 0, token.stderr[-2000:]
        yield {"env": env, "address": address, "token": token.stdout.strip(), "home": home}
    finally:
        # A graceful stop of every head process takes ~30 s; after a few seconds the rest is
        # killed with its session (all its processes, none of the test session's own Ray).
        head_process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head_process.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head_process.pid, signal.SIGKILL)
        head_process.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_dashboard(address: str, process: subprocess.Popen, log, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise AssertionError(f"ray start --head exited:\n{log.read()[-4000:]}")
        try:
            if httpx.get(f"{address}/api/version", timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"the head's dashboard at {address} did not come up in {timeout_s} s")


def _with_token(head) -> dict[str, str]:
    return {**head["env"], "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": head["token"]}


def test_job_submit_needs_the_clusters_token(head, tmp_path):
    """What a user meets first: the head runs with token authentication (Ray 2.60's default)."""
    env = {**head["env"], "HOME": str(tmp_path)}  # a client machine: no token file of its own
    refused = _run(["ray", "job", "submit", "--address", head["address"], "--", "echo", "hi"], env)
    assert refused.returncode != 0
    assert "token" in (refused.stdout + refused.stderr).lower()


def test_batch_job_through_ray_job_submit(head, tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    import pipelines

    shutil.copy(pipelines.sample_corpus_path(), job_dir / "corpus.jsonl")
    made = _run(
        ["qwen3-embed", "make-tiny-model", str(job_dir / "tiny-qwen3")], head["env"], cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr[-2000:]
    output = tmp_path / "out"
    env = _with_token(head)
    submitted = _submit_when_agent_is_up(
        [
            "ray", "job", "submit", "--address", head["address"], "--working-dir", str(job_dir),
            "--no-wait", "--", "qwen3-embed", "embed", "corpus.jsonl", str(output),
            "--model", "tiny-qwen3/", "--id-column", "id", "--no-progress",
        ],
        env,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    job_id = next(
        word.strip("'")
        for word in submitted.stdout.split()
        if word.strip("'").startswith("raysubmit_")
    )
    status = _poll_job(head["address"], env, job_id, timeout_s=420)
    logs = _run(["ray", "job", "logs", "--address", head["address"], job_id], env).stdout
    assert status == "SUCCEEDED", logs[-4000:]
    assert "embedded     271 rows" in logs
    table = pads.dataset(str(output), format="parquet").to_table()
    assert table.num_rows == 271 and len(set(table.column("id").to_pylist())) == 271


def _submit_when_agent_is_up(argv: list[str], env: dict[str, str]):
    """A fresh head's job agent starts some seconds after `ray start` returns (longer on a busy
    machine); until then Ray answers "No available agent to submit job, please try again later"."""
    deadline = time.monotonic() + 180
    while True:
        result = _run(argv, env)
        if "No available agent" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(3)


def _poll_job(address: str, env: dict[str, str], job_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = _run(["ray", "job", "status", "--address", address, job_id], env)
        # Ray's CLI ends with "Job 'raysubmit_...' succeeded" (or failed / stopped) once it is done
        final = re.search(r"Job '\S+' (succeeded|failed|stopped)", result.stdout + result.stderr)
        if final:
            return final.group(1).upper()
        time.sleep(2)
    logs = _run(["ray", "job", "logs", "--address", address, job_id], env)
    raise AssertionError(
        f"job {job_id} did not finish in {timeout_s} s; its log:\n{logs.stdout[-4000:]}{logs.stderr[-2000:]}"
    )


def test_shipped_serve_yaml_deploys_to_the_head(head, tmp_path):
    from qwen3_embed.testing import make_tiny_text_model

    model_dir = make_tiny_text_model(tmp_path / "tiny", hidden_size=256)
    config = yaml.safe_load((REPO / "cluster_configs/serve/text.yaml").read_text())
    port = free_port()
    config["http_options"].update(host="127.0.0.1", port=port)
    (app,) = config["applications"]
    (model,) = app["args"]["models"]
    model.update(model=str(model_dir), gpus_per_replica=0, cpus_per_replica=0.5)
    model.pop("autoscale", None)
    app["args"]["ingress"]["cpus_per_replica"] = 0.1
    deployed_yaml = tmp_path / "text.yaml"
    deployed_yaml.write_text(yaml.safe_dump(config))
    env = _with_token(head)
    deployed = _run(["serve", "deploy", str(deployed_yaml), "--address", head["address"]], env)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    try:
        body = _embed_when_ready(
            f"http://127.0.0.1:{port}/v1/embeddings", model["served_model_name"], timeout_s=300
        )
        assert len(body["data"][0]["embedding"]) == 256
    finally:
        _run(["serve", "shutdown", "--address", head["address"], "-y"], env, timeout=180)


def _embed_when_ready(url: str, served_name: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.post(
                url,
                json={"model": served_name, "input": ["The capital of China is Beijing."]},
                headers={"Authorization": "Bearer key1"},
                timeout=30,
            )
            if response.status_code == 200:
                return response.json()
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(2)
    raise AssertionError(f"{url} never answered 200: {last}\n{json.dumps({'url': url})}")
