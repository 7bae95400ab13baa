"""The API's `dimensions` end to end (local Ray, Serve's real HTTP proxy on 127.0.0.1, httpx and
the official `openai` client): a refused value is named as the API names it (`dimensions`, never
the core's `dim`), and the vectors at `dimensions=d` are the full vectors Matryoshka-truncated
to d and re-normalised, whether the batch held one dimension or several (the core's
`Embedder.apply_dim`, the one place a dimension is applied)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_support import assert_openai_error, deployed_app

from deployments.ingress import BATCH_REQUESTS_HEADER

APP = "serve-dimensions"
PREFIX = "/dims"
TEXTS = ["what is the capital of France", "Paris is the capital of France", "x"]
TOL = 1e-5


@pytest.fixture(scope="module")
def served(ray_cluster, tiny_text_model_dir: Path):
    config = {
        "models": [
            {
                "model": str(tiny_text_model_dir),
                "served_model_name": "tiny",
                "cpus_per_replica": 0.3,
                # Requests sent together wait for each other: batches with mixed dimensions.
                "batching": {"max_batch_size": 32, "batch_wait_ms": 300},
            }
        ],
        "ingress": {"cpus_per_replica": 0.1},
    }
    with deployed_app(config, APP, PREFIX) as base:
        yield base


@pytest.fixture(scope="module")
def card(served) -> dict:
    (model,) = httpx.get(f"{served}/v1/models", timeout=60).json()["data"]
    return model


def _bodies(card: dict) -> list[tuple[str, dict]]:
    low, high = card["min_dimensions"], card["hidden_size"]
    bodies = []
    for value in (low - 1, high + 1, 0, -3):
        bodies.append((f"input-{value}", {"input": TEXTS, "dimensions": value}))
    chat = {"messages": [{"role": "user", "content": "hello"}], "dimensions": high + 1}
    bodies.append(("messages", chat))
    return bodies


def test_refused_dimensions_are_named_as_the_api_names_them(served, card):
    low, high = card["min_dimensions"], card["hidden_size"]
    with httpx.Client(base_url=served, timeout=60) as http:
        for label, body in _bodies(card):
            error = assert_openai_error(http.post("/v1/embeddings", json=body), 400)
            value = body["dimensions"]
            assert error["code"] == "invalid_dimensions", (label, error)
            assert error["param"] == "dimensions", (label, error)
            assert error["message"] == (
                f"dimensions={value} is invalid for this model; valid values are integers in "
                f"[{low}, {high}]"
            ), label
            assert "dim=" not in error["message"]


def test_openai_client_reads_the_api_field_name(served, card):
    import openai

    client = openai.OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0)
    too_small = card["min_dimensions"] - 1
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="tiny", input="x", dimensions=too_small)
    assert info.value.code == "invalid_dimensions"
    assert info.value.param == "dimensions"
    assert str(info.value.body["message"]).startswith(f"dimensions={too_small} is invalid")


def _rows(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray([row["embedding"] for row in response.json()["data"]], dtype=np.float64)


def _truncated(full: np.ndarray, dim: int) -> np.ndarray:
    """The reference MRL step, in numpy: slice, then L2-normalise each row."""
    head = full[:, :dim]
    return head / np.linalg.norm(head, axis=1, keepdims=True)


def test_vectors_at_dimensions_are_the_full_vectors_truncated_and_renormalised(served, card):
    low, high = card["min_dimensions"], card["hidden_size"]
    # Distinct dimensions sent together: any batch of two or more requests is a mixed one.
    dims = sorted({low, low + 1, (low + high) // 2, high - 1, high})

    async def call_all() -> tuple[httpx.Response, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=served, timeout=120) as client:
            full = await client.post("/v1/embeddings", json={"input": TEXTS})
            mixed = await asyncio.gather(
                *(
                    client.post("/v1/embeddings", json={"input": TEXTS, "dimensions": dim})
                    for dim in dims
                )
            )
            return full, list(mixed)

    full_response, mixed = asyncio.run(call_all())
    full = _rows(full_response)
    assert full.shape == (len(TEXTS), high)
    for dim, response in zip(dims, mixed, strict=True):
        rows = _rows(response)
        assert rows.shape == (len(TEXTS), dim)
        np.testing.assert_allclose(rows, _truncated(full, dim), atol=TOL, err_msg=str(dim))
    assert max(int(r.headers[BATCH_REQUESTS_HEADER]) for r in mixed) > 1  # a mixed batch ran
    # One request alone (one dimension in its batch: the core applies it in the forward pass).
    with httpx.Client(base_url=served, timeout=60) as http:
        alone = http.post("/v1/embeddings", json={"input": TEXTS, "dimensions": low})
    assert alone.headers[BATCH_REQUESTS_HEADER] == "1"
    np.testing.assert_allclose(_rows(alone), _truncated(full, low), atol=TOL)
