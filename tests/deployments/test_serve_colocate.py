"""`ingress.colocate`: the HTTP routes served from the model replica itself (local Ray, Serve's
real HTTP proxy on 127.0.0.1, httpx). One deployment, the same answers as the two-deployment
layout (vectors equal to the core's, OpenAI-shaped errors, the replica queue's 429 +
Retry-After), and no ingress -> model hop left in the Server-Timing stages."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_support import assert_openai_error, deployed_app, post_concurrently, start_serve_once

from deployments.app import build_application
from deployments.config import ServeAppConfig
from deployments.ingress import BATCH_REQUESTS_HEADER, TIMING_HEADER
from qwen3_embed_layers.config_base import InvalidConfigError

APP = "serve-colocate"
PREFIX = "/colocate"
MAX_LENGTH = 48
TOL = 1e-5


def _config(model_dir: Path, **model: object) -> ServeAppConfig:
    return ServeAppConfig.model_validate(
        {
            "models": [
                {
                    "model": str(model_dir),
                    "served_model_name": "co",
                    "max_length": MAX_LENGTH,
                    "cpus_per_replica": 0.3,
                    **model,
                }
            ],
            "ingress": {"colocate": True, "timing_header": True},
        }
    )


@pytest.fixture(scope="module")
def served(ray_cluster, tiny_text_model_dir: Path):
    # One request runs, one token may wait: a flood meets the replica's own queue bound.
    config = _config(
        tiny_text_model_dir, batching={"max_batch_size": 1}, max_queued_tokens=1, retry_after_s=3
    )
    with deployed_app(config, APP, PREFIX) as base:
        yield base


def test_colocate_needs_exactly_one_model(tiny_text_model_dir: Path):
    with pytest.raises(InvalidConfigError, match="colocate serves one model"):
        ServeAppConfig.model_validate(
            {
                "models": [
                    {"model": str(tiny_text_model_dir), "served_model_name": "a"},
                    {"model": str(tiny_text_model_dir), "served_model_name": "b"},
                ],
                "ingress": {"colocate": True},
            }
        )


def test_one_deployment_with_the_model_deployment_name(served):
    from ray import serve

    deployments = serve.status().applications[APP].deployments
    assert list(deployments) == ["EmbeddingModel-co"]
    # The colocated deployment answers the model deployment's own calls too.
    stats = serve.get_deployment_handle("EmbeddingModel-co", app_name=APP).stats.remote().result()
    assert stats["max_batch_size"] == 1  # the model's user_config reached the in-process queue


def test_answers_match_the_core_and_the_hop_is_gone(served, tiny_text_embedder):
    texts = ["a query about ray", "a longer document about serving embeddings online"]
    with httpx.Client(base_url=served, timeout=60) as http:
        assert http.get("/ready").status_code == 200
        models = http.get("/v1/models").json()
        assert [model["id"] for model in models["data"]] == ["co"]
        response = http.post("/v1/embeddings", json={"input": texts, "dimensions": 32})
        bad = http.post("/v1/embeddings", json={"input": texts, "dimensions": 7})
    assert response.status_code == 200, response.text
    rows = np.asarray([row["embedding"] for row in response.json()["data"]], np.float32)
    expected = tiny_text_embedder.embed(texts, dim=32).embeddings.numpy()
    assert float(np.max(np.abs(rows - expected))) <= TOL
    assert response.headers[BATCH_REQUESTS_HEADER] == "1"
    timings = dict(
        (name, float(ms))
        for name, ms in (
            p.strip().split(";dur=") for p in response.headers[TIMING_HEADER].split(",")
        )
    )
    # In-process: the "model call" is the model's own span, with no Ray call around it.
    assert timings["model-call"] - timings["model"] < 1.0, timings
    assert_openai_error(bad, 400, "invalid_dimensions")


def test_replica_queue_bound_is_429_with_retry_after(served):
    payload = {"input": [f"load {i} " * 3 for i in range(32)]}

    responses = post_concurrently(served, [payload] * 24)
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert 200 in statuses and 429 in statuses, statuses
    rejected = next(response for response in responses if response.status_code == 429)
    error = assert_openai_error(rejected, 429, "queue_full")
    assert "tokens waiting" in error["message"]
    assert rejected.headers["retry-after"] == "3"


@pytest.mark.slow
def test_colocated_replica_killed_with_requests_in_flight(
    ray_cluster, tiny_text_model_dir, tiny_text_embedder
):
    """The documented trade-off, measured: requests in flight on a colocated replica that dies
    get the proxy's own error (no OpenAI body: there is no ingress left to write one) at once, or
    (HAProxy, the default proxy) a connection closed with no answer. Requests sent during the
    outage, retried as the openai client retries, end with correct answers from the replacement
    (behind HAProxy, one sent before HAProxy has marked the dead replica down gets its bare 500
    at once; behind Ray's proxy they wait)."""
    import os
    import signal
    import time

    import ray
    from ray import serve
    from serve_support import actor_pid, replicas

    port = start_serve_once()
    app = "serve-colocate-kill"
    # Batches wait 3 s, so the requests are surely inside the replica when it is killed.
    config = _config(tiny_text_model_dir, batching={"max_batch_size": 64, "batch_wait_ms": 3000})
    serve.run(build_application(config, cluster_gpus=0), name=app, route_prefix="/cokill")
    base = f"http://127.0.0.1:{port}/cokill"
    try:
        (victim,) = replicas(app)["EmbeddingModel-co"]
        pid = victim["pid"]
        assert actor_pid(victim["actor_name"]) == pid
        replica = ray.get_actor(victim["actor_name"], namespace="serve")

        async def scenario():
            async with httpx.AsyncClient(base_url=base, timeout=90) as http:

                async def call(text: str) -> tuple[httpx.Response | str, float]:
                    started = time.monotonic()
                    try:
                        response = await http.post("/v1/embeddings", json={"input": [text]})
                    except httpx.RemoteProtocolError as error:  # closed with no answer
                        return type(error).__name__, time.monotonic() - started
                    return response, time.monotonic() - started

                warm = (await call("warm"))[0]
                assert isinstance(warm, httpx.Response) and warm.status_code == 200
                in_flight = [asyncio.ensure_future(call(f"in flight {i}")) for i in range(8)]
                deadline = time.monotonic() + 20
                while await replica.get_num_ongoing_requests.remote() < 8:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)

                async def call_retrying(text: str) -> tuple[httpx.Response | str, float]:
                    # As the openai client does by default: 2 retries of a 500 or a closed
                    # connection, after 0.5 s and 1 s.
                    for backoff in (0.5, 1.0, None):
                        answer, seconds = await call(text)
                        if getattr(answer, "status_code", 500) != 500 or backoff is None:
                            return answer, seconds
                        await asyncio.sleep(backoff)
                    raise AssertionError("unreachable")

                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
                during = [asyncio.ensure_future(call_retrying(f"outage {i}")) for i in range(4)]
                first = await asyncio.gather(*in_flight)
                first_s = time.monotonic() - killed
                second = await asyncio.gather(*during)
                return first, first_s, second

        first, first_s, second = asyncio.run(scenario())
    finally:
        serve.delete(app)
    statuses = sorted(str(getattr(response, "status_code", response)) for response, _ in first)
    print(
        f"\n[colocate kill] in flight: {statuses}, answered within {first_s:.2f} s; "
        f"outage: {[(getattr(r, 'status_code', r), round(s, 1)) for r, s in second]}"
    )
    # The proxy's own answer for a replica that died under the request (Ray's proxy and HAProxy:
    # a bare 500), or HAProxy's closed connection; the openai client retries both.
    assert set(statuses) <= {"200", "500", "RemoteProtocolError"}, statuses
    assert "500" in statuses or "RemoteProtocolError" in statuses, statuses
    assert first_s < 30  # answered at once, not at a timeout
    for index, (response, _) in enumerate(second):
        assert isinstance(response, httpx.Response), response
        assert response.status_code == 200, response.text
        row = np.asarray(response.json()["data"][0]["embedding"], np.float32)
        expected = tiny_text_embedder.embed([f"outage {index}"]).embeddings.numpy()[0]
        assert float(np.max(np.abs(row - expected))) <= TOL
