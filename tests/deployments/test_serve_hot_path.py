"""The online hot path end to end (local Ray, Serve's real HTTP proxy on 127.0.0.1, httpx):
continuous batching with mixed `dimensions` in one batch, the replica queue's token bound
(429 + Retry-After in OpenAI's shape), and the Server-Timing stages the benchmark reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_support import assert_openai_error, deployed_app, post_concurrently

from deployments.config import BatchingConfig, ServeAppConfig
from deployments.ingress import BATCH_REQUESTS_HEADER, TIMING_HEADER

APP = "serve-hot-path"
PREFIX = "/hot"
MAX_LENGTH = 48
TOL = 1e-5
STAGES = ("ingress-in", "model-call", "model", "prepare", "queue", "forward", "render", "ingress")


@pytest.fixture(scope="module")
def served(ray_cluster, tiny_text_model_dir: Path):
    common = {"model": str(tiny_text_model_dir), "max_length": MAX_LENGTH}
    config = ServeAppConfig.model_validate(
        {
            "models": [
                # Default batching: no wait; batches form only from what queues while busy.
                {**common, "served_model_name": "hot", "cpus_per_replica": 0.3},
                # One request runs, at most one token waits: everything else is refused by the
                # replica's own queue (Serve's queue, 64 + 256, is far from full).
                {
                    **common,
                    "served_model_name": "one-token-queue",
                    "cpus_per_replica": 0.3,
                    "batching": {"max_batch_size": 1},
                    "max_queued_tokens": 1,
                    "retry_after_s": 3,
                },
            ],
            "ingress": {"cpus_per_replica": 0.1, "timing_header": True},
        }
    )
    with deployed_app(config, APP, PREFIX) as base:
        yield base


def _timings(response: httpx.Response) -> dict[str, float]:
    parts = [part.strip().split(";dur=") for part in response.headers[TIMING_HEADER].split(",")]
    return {name: float(ms) for name, ms in parts}


def test_defaults_start_a_lone_request_at_once():
    assert BatchingConfig().batch_wait_ms == 0


def test_server_timing_stages_nest(served):
    with httpx.Client(base_url=served, timeout=60) as http:
        http.post("/v1/embeddings", json={"model": "hot", "input": "warm up"})
        response = http.post("/v1/embeddings", json={"model": "hot", "input": ["one query"]})
    assert response.status_code == 200, response.text
    timings = _timings(response)
    assert tuple(timings) == STAGES
    assert all(value >= 0 for value in timings.values()), timings
    slack = 0.5  # ms: each stage is rounded to microseconds, clocks differ per process
    # The replica's stages lie inside its own span, which lies inside the ingress's call.
    assert timings["prepare"] + timings["queue"] + timings["forward"] <= timings["model"] + slack
    assert timings["model"] <= timings["model-call"] + slack
    assert (
        timings["ingress-in"] + timings["model-call"] + timings["render"]
        <= timings["ingress"] + slack
    )
    assert response.headers[BATCH_REQUESTS_HEADER] == "1"


def test_mixed_dimensions_share_a_batch_and_match_the_core(served, tiny_text_embedder):
    dims = [None, 32, 48, 64, 40, None, 32, 56] * 4
    texts = [f"request {i} with some words" for i in range(len(dims))]

    async def call_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served, timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/v1/embeddings",
                        json={"model": "hot", "input": [text, "second"], "dimensions": dim}
                        if dim is not None
                        else {"model": "hot", "input": [text, "second"]},
                    )
                    for text, dim in zip(texts, dims, strict=True)
                )
            )

    responses = asyncio.run(call_all())
    assert [response.status_code for response in responses] == [200] * len(dims)
    for text, dim, response in zip(texts, dims, responses, strict=True):
        rows = np.asarray([row["embedding"] for row in response.json()["data"]], np.float32)
        expected = tiny_text_embedder.embed([text, "second"], dim=dim).embeddings.numpy()
        assert rows.shape == expected.shape
        assert float(np.max(np.abs(rows - expected))) <= TOL, (dim, text)
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    # Requests that came while the device was busy were batched together (mixed dimensions).
    assert max(int(r.headers[BATCH_REQUESTS_HEADER]) for r in responses) > 1


def test_replica_queue_token_bound_answers_429_with_retry_after(served):
    payload = {"model": "one-token-queue", "input": [f"load {i} " * 3 for i in range(32)]}

    responses = post_concurrently(served, [payload] * 24)
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert 200 in statuses and 429 in statuses, statuses
    rejected = next(response for response in responses if response.status_code == 429)
    error = assert_openai_error(rejected, 429, "queue_full")
    assert "tokens waiting" in error["message"]  # the replica's queue, not Serve's
    assert rejected.headers["retry-after"] == "3"
