"""Rerank and score end to end on the local Ray: one app serving an embedding model and two
rerankers (the tiny text and VL reranker checkpoints) behind Serve's real HTTP proxy, with API
keys on; the official `cohere` client against /v1/rerank and /v2/rerank, httpx for /score and the
error shapes. Scores must equal the core's `Reranker.score` on the same weights (1e-5)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from serve_support import (
    api_client,
    assert_openai_error,
    deployed_app,
    png_bytes,
    post_concurrently,
)

from deployments.config import ServeAppConfig
from deployments.ingress import BATCH_REQUESTS_HEADER

# The app serves a VL reranker too: its fixture needs the [vl] extra.
pytestmark = pytest.mark.requires_vl

APP = "serve-rerank-test"
PREFIX = "/rr"
KEY = "rerank-key-0123456789"
TOL = 1e-5
QUERY = "which animal barks?"
DOCUMENTS = ["the dog barks at night", "cats purr", "a long text about birds " * 6, "dogs"]


@pytest.fixture(scope="module")
def served(ray_cluster, tiny_text_model_dir: Path, tiny_text_reranker_dir: Path,
           tiny_vl_reranker_dir: Path, tmp_path_factory):  # fmt: skip
    key_file = tmp_path_factory.mktemp("keys") / "api-keys"
    key_file.write_text(f"{KEY}\n")
    config = ServeAppConfig.model_validate(
        {
            "models": [
                {
                    "model": str(tiny_text_model_dir),
                    "served_model_name": "tiny",
                    "cpus_per_replica": 0.2,
                },
                {
                    "model": str(tiny_text_reranker_dir),
                    "served_model_name": "rr",
                    "task": "rerank",
                    "cpus_per_replica": 0.3,
                    "batching": {"max_batch_size": 16, "batch_wait_ms": 100},
                },
                {
                    "model": str(tiny_vl_reranker_dir),
                    "served_model_name": "vlr",
                    "task": "rerank",
                    "cpus_per_replica": 0.2,
                },
            ],
            "limits": {"max_inputs_per_request": 8},
            "auth": {"api_key_file": str(key_file)},
            "ingress": {"cpus_per_replica": 0.1},
        }  # fmt: skip
    )
    with deployed_app(config, APP, PREFIX) as base:
        yield base


@pytest.fixture(scope="module")
def http(served):
    with api_client(served, KEY) as client:
        yield client


def test_models_lists_the_embedder_and_the_rerankers(http):
    cards = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
    assert set(cards) == {"tiny", "rr", "vlr"}
    assert cards["rr"]["task"] == "rerank" and cards["vlr"]["family"] == "vl"
    assert "task" not in cards["tiny"] and cards["tiny"]["hidden_size"] > 0
    # The server's `auto` on a CPU (deployments.serving_defaults), as for embedding models: the
    # text reranker packed, the VL one as the core chooses (padded); the scores tests below
    # hold the packed replica's scores to the core's padded ones.
    assert (cards["rr"]["forward_mode"], cards["rr"]["attention_kernel"]) == (
        "packed",
        "per_sequence_sdpa",
    )
    assert cards["vlr"]["forward_mode"] == "padded"


def test_cohere_client_v1_and_v2_get_the_cores_scores(served, tiny_text_reranker):
    import cohere

    expected = tiny_text_reranker.score(QUERY, DOCUMENTS)
    order = np.argsort(-expected, kind="stable")
    v1 = cohere.Client(api_key=KEY, base_url=served, timeout=60)
    answer = v1.rerank(model="rr", query=QUERY, documents=DOCUMENTS, top_n=3, return_documents=True)
    assert [r.index for r in answer.results] == order[:3].tolist()
    for result in answer.results:
        assert abs(result.relevance_score - expected[result.index]) <= TOL
        assert result.document.text == DOCUMENTS[result.index]
    v2 = cohere.ClientV2(api_key=KEY, base_url=served, timeout=60)
    answer = v2.rerank(model="rr", query=QUERY, documents=DOCUMENTS)
    assert [r.index for r in answer.results] == order.tolist()  # no top_n: every document
    assert max(abs(r.relevance_score - expected[r.index]) for r in answer.results) <= TOL
    # Cohere's {"text": ...} documents are items too.
    answer = v1.rerank(model="rr", query=QUERY, documents=[{"text": d} for d in DOCUMENTS])
    assert max(abs(r.relevance_score - expected[r.index]) for r in answer.results) <= TOL


def test_score_one_to_many_and_many_to_many(http, tiny_text_reranker):
    body = http.post("/score", json={"model": "rr", "text_1": QUERY, "text_2": DOCUMENTS}).json()
    expected = tiny_text_reranker.score(QUERY, DOCUMENTS)
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3] and body["object"] == "list"
    assert np.max(np.abs(np.array([d["score"] for d in body["data"]]) - expected)) <= TOL
    pairs = [("q one", "d one"), ("another query", "another document")]
    body = http.post(
        "/v1/score",
        json={"model": "rr", "queries": [q for q, _ in pairs], "documents": [d for _, d in pairs]},
    ).json()
    expected = tiny_text_reranker.score_pairs(pairs)
    assert np.max(np.abs(np.array([d["score"] for d in body["data"]]) - expected)) <= TOL
    assert body["usage"]["prompt_tokens"] > 0


def test_pairs_of_concurrent_requests_share_batches_and_equal_alone(served, tiny_text_reranker):
    bodies = [
        {"model": "rr", "query": f"query {i}", "documents": DOCUMENTS[: 1 + i % 4]}
        for i in range(8)
    ]
    responses = post_concurrently(served, bodies, KEY, path="/v1/rerank")
    shared = max(int(r.headers[BATCH_REQUESTS_HEADER]) for r in responses)
    assert shared > 1, "no two requests' pairs were scored in one batch"
    for body, response in zip(bodies, responses, strict=True):
        assert response.status_code == 200, response.text
        expected = tiny_text_reranker.score(body["query"], body["documents"])
        got = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
        assert max(abs(got[i] - expected[i]) for i in range(len(expected))) <= TOL


def test_vl_reranker_scores_an_image_document(http, tiny_vl_reranker):
    png = png_bytes(64, 48)
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    body = http.post(
        "/v1/rerank",
        json={"model": "vlr", "query": "a red square", "documents": [{"image": uri}, "text only"]},
    ).json()
    expected = tiny_vl_reranker.score("a red square", [{"image": png}, "text only"])
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert max(abs(got[i] - expected[i]) for i in range(2)) <= TOL
    assert body["results"][0]["document"] == (
        {"image": uri} if got[0] >= got[1] else {"text": "text only"}
    )


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"),
    [
        ("/v1/rerank", {"model": "tiny", "query": "q", "documents": ["d"]}, 400, "model_task_mismatch", "model"),
        ("/v1/embeddings", {"model": "rr", "input": "x"}, 400, "model_task_mismatch", "model"),
        ("/v1/rerank", {"model": "nope", "query": "q", "documents": ["d"]}, 404, "model_not_found", "model"),
        ("/v1/rerank", {"model": "rr", "query": "q", "documents": ["d"], "top_k": 1}, 400, "unknown_parameter", "top_k"),
        ("/v1/rerank", {"model": "rr", "query": "q", "documents": []}, 400, "empty_input", "documents"),
        ("/v1/rerank", {"model": "rr", "query": "q", "documents": ["d"] * 9}, 400, "too_many_inputs", "documents"),
        ("/v1/rerank", {"model": "rr", "query": "q", "documents": ["ok", ""]}, 400, "invalid_input", "documents[1]"),
        ("/v1/rerank", {"model": "rr", "query": "q", "documents": [{"image": "data:image/png;base64,AAAA"}]}, 400, "unsupported_input", "documents[0].image"),
        ("/v1/rerank", {"model": "vlr", "query": "q", "documents": [{"image": "http://127.0.0.1/x.png"}]}, 400, "media_url_disabled", "documents[0].image"),
        ("/score", {"model": "rr", "text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, 400, "invalid_value", "text_1"),
        ("/v1/rerank", {"model": "rr", "query": "q", "documents": ["d"], "truncate": False, "truncate_prompt_tokens": 0}, 400, "invalid_value", "truncate_prompt_tokens"),
    ],
)  # fmt: skip
def test_bad_requests_are_openai_shaped_4xx(http, path, body, status, code, param):
    error = assert_openai_error(http.post(path, json=body), status, code)
    assert error["param"] == param, error


def test_rerank_needs_the_key(served):
    with api_client(served) as anonymous:
        response = anonymous.post(
            "/v1/rerank", json={"model": "rr", "query": "q", "documents": ["d"]}
        )
    assert_openai_error(response, 401, "invalid_api_key")


def test_colocated_reranker_answers_the_same(
    ray_cluster, tiny_text_reranker_dir, tiny_text_reranker
):
    """`ingress.colocate` with a reranker: the routes run in the reranker's own replica."""
    config = {
        "models": [
            {"model": str(tiny_text_reranker_dir), "served_model_name": "co-rr", "task": "rerank",
             "cpus_per_replica": 0.2},
        ],
        "ingress": {"colocate": True},
    }  # fmt: skip
    with deployed_app(config, "serve-rerank-colocate", "/rrco") as base, api_client(base) as client:
        body = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()
        expected = tiny_text_reranker.score(QUERY, DOCUMENTS)
        got = {r["index"]: r["relevance_score"] for r in body["results"]}
        assert max(abs(got[i] - expected[i]) for i in range(len(DOCUMENTS))) <= TOL
        refused = client.post("/v1/embeddings", json={"input": "x"})
        error = assert_openai_error(refused, 400, "model_task_mismatch")
        assert "no embedding model" in error["message"]
