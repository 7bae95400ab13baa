"""The Serve application end to end on the local Ray: real HTTP proxy on 127.0.0.1, the tiny text
checkpoint, httpx and the official `openai` client.

One application serves two copies of the tiny model: `tiny` (batched, the parity and error
tests) and `tiny-narrow` (one request at a time, a queue of one: the 429 test). API keys are on
(a key file), so every call also exercises authentication.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_support import (
    api_client,
    assert_openai_error,
    deployed_app,
    post_concurrently,
    start_serve_once,
)

from deployments.app import build_application
from deployments.config import ServeAppConfig
from deployments.ingress import BATCH_REQUESTS_HEADER

APP = "serve-test"
PREFIX = "/t"
KEY = "test-key-0123456789"
MAX_LENGTH = 48
TOL = 1e-5


@pytest.fixture(scope="module")
def served(ray_cluster, tiny_text_model_dir: Path, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "api-keys"
    key_file.write_text(f"# test keys\n{KEY}\nsecond-key\n")
    common = {"model": str(tiny_text_model_dir), "max_length": MAX_LENGTH}
    config = ServeAppConfig.model_validate(
        {
            "models": [
                {
                    **common,
                    "served_model_name": "tiny",
                    "cpus_per_replica": 0.4,
                    "batching": {"max_batch_size": 16, "batch_wait_ms": 50},
                },
                {
                    **common,
                    "served_model_name": "tiny-narrow",
                    "cpus_per_replica": 0.3,
                    "batching": {"max_batch_size": 1, "batch_wait_ms": 0},
                    "max_ongoing_requests": 1,
                    "max_queued_requests": 1,
                    "retry_after_s": 2,
                },
            ],
            "limits": {
                "max_request_bytes": 200_000,
                "max_inputs_per_request": 100,
                "max_chars_per_request": 100_000,
                "max_tokens_per_request": 4000,
            },
            "auth": {"api_key_file": str(key_file)},
            "ingress": {"cpus_per_replica": 0.1},
        }
    )
    with deployed_app(config, APP, PREFIX) as base:
        yield base


@pytest.fixture(scope="module")
def http(served):
    with api_client(served, KEY) as client:
        yield client


@pytest.fixture(scope="module")
def openai_client(served):
    from openai import OpenAI

    return OpenAI(base_url=f"{served}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def truncating_embedder(tiny_text_model_dir):
    """The reference for the served model's max_length (truncation parity)."""
    from qwen3_embed import Embedder

    return Embedder.from_pretrained(tiny_text_model_dir, device="cpu", max_length=MAX_LENGTH)


def _max_diff(served_rows, reference) -> float:
    return float(np.max(np.abs(np.asarray(served_rows, dtype=np.float32) - reference.numpy())))


TEXTS = ["hello world", "the quick brown fox", "a"]


# ------------------------------------------------------------------------------- probes
def test_health_ready_and_models(http, served):
    assert httpx.get(f"{served}/health").json() == {"status": "ok"}  # no key needed
    ready = httpx.get(f"{served}/ready", timeout=30)
    assert ready.status_code == 200 and ready.json()["models"] == {
        "tiny": True,
        "tiny-narrow": True,
    }
    models = http.get("/v1/models").json()
    assert models["object"] == "list"
    cards = {card["id"]: card for card in models["data"]}
    assert set(cards) == {"tiny", "tiny-narrow"}
    assert cards["tiny"]["family"] == "text" and cards["tiny"]["hidden_size"] == 64
    assert cards["tiny"]["max_input_tokens"] == MAX_LENGTH
    # How the replica runs it: `auto` on CPU is padded, through the model's own sdpa.
    # the server's `auto` on CPU (deployments.serving_defaults): packed, one SDPA call a sequence
    assert (cards["tiny"]["forward_mode"], cards["tiny"]["attention_kernel"]) == (
        "packed",
        "per_sequence_sdpa",
    )


# ------------------------------------------------------------------------------- parity
def test_openai_client_float_matches_core(openai_client, tiny_text_embedder):
    result = openai_client.embeddings.create(model="tiny", input=TEXTS, encoding_format="float")
    reference = tiny_text_embedder.embed(TEXTS)
    assert [row.index for row in result.data] == [0, 1, 2]
    assert all(row.object == "embedding" for row in result.data) and result.model == "tiny"
    assert _max_diff([row.embedding for row in result.data], reference.embeddings) <= TOL
    assert (
        result.usage.prompt_tokens == result.usage.total_tokens == sum(reference.sequence_lengths)
    )


def test_openai_client_base64_and_dimensions(openai_client, tiny_text_embedder):
    # The client asks for base64 by default and decodes it itself.
    result = openai_client.embeddings.create(model="tiny", input=TEXTS, dimensions=32)
    reference = tiny_text_embedder.embed(TEXTS, dim=32)
    rows = np.asarray([row.embedding for row in result.data], dtype=np.float32)
    assert rows.shape == (3, 32)
    assert _max_diff(rows, reference.embeddings) <= TOL
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    # Asked for explicitly, base64 comes back as the raw string: little-endian float32 bytes.
    explicit = openai_client.embeddings.create(
        model="tiny", input="hello world", encoding_format="base64"
    )
    row = np.frombuffer(base64.b64decode(explicit.data[0].embedding), dtype="<f4")
    assert _max_diff([row], tiny_text_embedder.embed(["hello world"]).embeddings) <= TOL


def test_raw_base64_is_little_endian_float32(http, tiny_text_embedder):
    response = http.post(
        "/v1/embeddings", json={"model": "tiny", "input": TEXTS, "encoding_format": "base64"}
    )
    assert response.status_code == 200, response.text
    rows = [
        np.frombuffer(base64.b64decode(row["embedding"]), dtype="<f4")
        for row in response.json()["data"]
    ]
    assert _max_diff(rows, tiny_text_embedder.embed(TEXTS).embeddings) <= TOL


def test_instruction_extension_and_default_model(http, openai_client, tiny_text_embedder):
    instruction = "Given a question, find the answer"
    result = openai_client.embeddings.create(
        model="tiny",
        input=["what is ray"],
        encoding_format="float",
        extra_body={"instruction": instruction},
    )
    query = tiny_text_embedder.embed(["what is ray"], instruction=instruction)
    assert _max_diff([result.data[0].embedding], query.embeddings) <= TOL
    assert result.usage.prompt_tokens == query.sequence_lengths[0]
    document = tiny_text_embedder.embed(["what is ray"])
    assert (
        _max_diff([result.data[0].embedding], document.embeddings) > 1e-3
    )  # the instruction mattered
    # Two models are served, so `model` is required.
    assert_openai_error(http.post("/v1/embeddings", json={"input": "x"}), 400, "model_required")


def test_truncate_extension_and_context_length_exceeded(http, truncating_embedder):
    long_text = "word " * 40  # > MAX_LENGTH tokens with the tiny tokenizer
    error = assert_openai_error(  # OpenAI's status and code (it was a 413 input_too_long)
        http.post("/v1/embeddings", json={"model": "tiny", "input": ["ok", long_text]}),
        400,
        "context_length_exceeded",
    )
    assert "input[1]" in error["message"]
    response = http.post(
        "/v1/embeddings", json={"model": "tiny", "input": ["ok", long_text], "truncate": True}
    )
    assert response.status_code == 200, response.text
    reference = truncating_embedder.embed(["ok", long_text], truncate=True)
    assert reference.sequence_lengths[1] == MAX_LENGTH
    assert (
        _max_diff([row["embedding"] for row in response.json()["data"]], reference.embeddings)
        <= TOL
    )
    assert response.json()["usage"]["prompt_tokens"] == sum(reference.sequence_lengths)


# --------------------------------------------------------------------------- batching
def test_64_concurrent_requests_are_correct_in_order_and_batched(served, tiny_text_embedder):
    texts = [[f"request {i}", f"second input of request {i}"] for i in range(64)]

    responses = post_concurrently(
        served, [{"model": "tiny", "input": pair} for pair in texts], key=KEY
    )
    assert [response.status_code for response in responses] == [200] * 64
    flat = [text for pair in texts for text in pair]
    reference = tiny_text_embedder.embed(flat)
    for i, response in enumerate(responses):
        body = response.json()
        assert [row["index"] for row in body["data"]] == [0, 1]
        rows = [row["embedding"] for row in body["data"]]
        assert _max_diff(rows, reference.embeddings[2 * i : 2 * i + 2]) <= TOL, i
        assert body["usage"]["prompt_tokens"] == sum(reference.sequence_lengths[2 * i : 2 * i + 2])
    batch_sizes = [int(response.headers[BATCH_REQUESTS_HEADER]) for response in responses]
    assert max(batch_sizes) > 1, batch_sizes
    assert max(batch_sizes) <= 16  # the configured max_batch_size (user_config) holds


def test_user_config_reaches_the_batcher_and_reconfigure_changes_it(served):
    from ray import serve

    handle = serve.get_deployment_handle("EmbeddingModel-tiny", app_name=APP)
    stats = handle.stats.remote().result(timeout_s=30)
    # 16 / 50 ms differ from the decorator's defaults (32 / 10 ms): they came through user_config.
    assert stats["max_batch_size"] == 16 and stats["batch_wait_timeout_s"] == pytest.approx(0.05)
    assert stats["batches"] > 0 and max(stats["recent_batch_requests"]) > 1
    try:
        handle.reconfigure.remote({"max_batch_size": 4, "batch_wait_ms": 5}).result(timeout_s=30)
        stats = handle.stats.remote().result(timeout_s=30)
        assert stats["max_batch_size"] == 4 and stats["batch_wait_timeout_s"] == pytest.approx(
            0.005
        )
    finally:
        handle.reconfigure.remote({"max_batch_size": 16, "batch_wait_ms": 50}).result(timeout_s=30)


def test_full_queue_answers_429_with_retry_after(served):
    payload = {"model": "tiny-narrow", "input": [f"load {i} " * 3 for i in range(32)]}

    responses = post_concurrently(served, [payload] * 24, key=KEY)
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert 429 in statuses and 200 in statuses, statuses
    rejected = next(response for response in responses if response.status_code == 429)
    assert_openai_error(rejected, 429, "queue_full")
    assert rejected.headers["retry-after"] == "2"


# ----------------------------------------------------------------------------- errors
ERROR_CASES = [
    # (body or raw bytes, status, code)
    ({"model": "tiny", "input": ""}, 400, "invalid_input"),
    ({"model": "tiny", "input": []}, 400, "empty_input"),
    ({"model": "tiny", "input": ["ok", "   "]}, 400, "invalid_input"),
    ({"model": "tiny", "input": [1, 2, 3]}, 400, "token_ids_not_supported"),
    ({"model": "tiny", "input": [[1, 2], [3]]}, 400, "token_ids_not_supported"),
    ({"model": "tiny", "input": ["ok", None]}, 400, "invalid_input"),
    (
        {"model": "tiny", "input": [{"text": "x", "image": "data:image/png;base64,AAAA"}]},
        400,
        "unsupported_input",
    ),
    (
        {"model": "tiny", "input": [{"text": "x", "image": "file:///etc/passwd"}]},
        400,
        "unsupported_input",
    ),
    ({"model": "tiny", "input": "x", "dimensions": 5}, 400, "invalid_dimensions"),
    ({"model": "tiny", "input": "x", "dimensions": 65}, 400, "invalid_dimensions"),
    ({"model": "tiny", "input": "x", "instruction": " "}, 400, "invalid_input"),
    ({"model": "tiny", "input": [f"x{i}" for i in range(101)]}, 400, "too_many_inputs"),
    ({"model": "nope", "input": "x"}, 404, "model_not_found"),
    ({"model": "tiny", "input": ["y" * 60_000, "z" * 60_000]}, 413, "request_too_large"),
    (
        {"model": "tiny", "input": ["w" * 60 for _ in range(100)], "truncate": True},
        400,
        "max_tokens_per_request",
    ),
    ({"model": "tiny", "input": "x" * 250_000}, 413, "request_too_large"),
    # Schema errors: 400 with OpenAI's codes (they were 422 invalid_request_body).
    ({"model": "tiny", "input": 5}, 400, "invalid_type"),
    ({"model": "tiny"}, 400, "missing_required_parameter"),
    ({"model": "tiny", "input": "x", "dimensions": "32"}, 400, "invalid_type"),
    ({"model": "tiny", "input": "x", "encoding_format": "int8"}, 400, "invalid_value"),
    ({"model": "tiny", "input": "x", "truncate": "yes"}, 400, "invalid_type"),
    ({"model": "tiny", "input": "x", "instrucion": "typo"}, 400, "unknown_parameter"),
    (b'{"model": "tiny", "input": ', 400, "invalid_json"),
    (b'["x"]', 400, "invalid_type"),
    # Lone surrogates (valid for Python's json, not UTF-8): a 400, never a 5xx from the tokenizer.
    (b'{"model": "tiny", "input": "x \\ud800 y"}', 400, "invalid_json"),
    (b'{"model": "tiny", "input": ["ok", "\\udc00"]}', 400, "invalid_json"),
    (b'{"model": "tiny", "input": "ok", "instruction": "\\ud800"}', 400, "invalid_json"),
    (b'{"model": "tiny", "input": "x \xed\xa0\x80"}', 400, "invalid_json"),
    # vLLM's fields: values that would ask for another prompt than the official one are refused.
    ({"model": "tiny", "input": "x", "truncate_prompt_tokens": 0}, 400, "invalid_value"),
    ({"model": "tiny", "input": "x", "truncate_prompt_tokens": 49}, 400, "invalid_value"),
    ({"model": "tiny", "input": "x", "truncation_side": "left"}, 400, "invalid_value"),
    ({"model": "tiny", "input": "x", "add_special_tokens": False}, 400, "invalid_value"),
    (
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": "x"}],
            "add_special_tokens": True,
        },
        400,
        "invalid_value",
    ),
    (
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": "x"}],
            "continue_final_message": True,
        },
        400,
        "invalid_value",
    ),
    # vLLM's embed_dtype float16 is a base64 encoding: with the float format it is refused.
    ({"model": "tiny", "input": "x", "embed_dtype": "float16"}, 400, "invalid_value"),
    ({"model": "tiny", "input": "x", "embed_dtype": "fp8_e4m3"}, 400, "invalid_value"),
    # The chat form on a text model: text only, one conversation.
    (
        {"model": "tiny", "input": "x", "messages": [{"role": "user", "content": "x"}]},
        400,
        "invalid_value",
    ),
    ({"model": "tiny", "messages": []}, 400, "empty_input"),
    ({"model": "tiny", "messages": [{"role": "assistant", "content": "x"}]}, 400, "invalid_value"),
    (
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        },
        400,
        "invalid_value",
    ),
    (
        {
            "model": "tiny",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                    ],
                }
            ],
        },
        400,
        "unsupported_input",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "code"), ERROR_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(ERROR_CASES)]
)
def test_error_statuses_in_openai_shape(http, body, status, code):
    if isinstance(body, bytes):
        response = http.post(
            "/v1/embeddings", content=body, headers={"Content-Type": "application/json"}
        )
    else:
        response = http.post("/v1/embeddings", json=body)
    assert_openai_error(response, status, code)


def test_user_field_accepted_and_unknown_routes_in_openai_shape(http):
    response = http.post("/v1/embeddings", json={"model": "tiny", "input": "x", "user": "someone"})
    assert response.status_code == 200, response.text
    assert_openai_error(http.get("/v1/nothing-here"), 404, "not_found")
    assert_openai_error(http.get("/v1/embeddings"), 405, "method_not_allowed")


def test_openai_client_sees_typed_errors(openai_client):
    import openai

    with pytest.raises(openai.NotFoundError):
        openai_client.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError):
        openai_client.embeddings.create(model="tiny", input="x", dimensions=4)


# ------------------------------------------------------------------------------ auth
def test_api_keys(served):
    body = {"model": "tiny", "input": "x"}
    missing = httpx.post(f"{served}/v1/embeddings", json=body, timeout=30)
    error = assert_openai_error(missing, 401, "invalid_api_key")
    assert missing.headers["www-authenticate"] == "Bearer" and KEY not in error["message"]
    for header in ("Bearer wrong-key", f"Basic {KEY}", KEY, f"Bearer {KEY}x"):
        response = httpx.post(
            f"{served}/v1/embeddings", json=body, headers={"Authorization": header}, timeout=30
        )
        assert_openai_error(response, 401, "invalid_api_key")
    assert_openai_error(httpx.get(f"{served}/v1/models", timeout=30), 401, "invalid_api_key")
    second = httpx.post(
        f"{served}/v1/embeddings",
        json=body,
        headers={"Authorization": "Bearer second-key"},
        timeout=30,
    )
    assert second.status_code == 200

    import openai
    from openai import OpenAI

    wrong = OpenAI(base_url=f"{served}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.embeddings.create(model="tiny", input="x")


# --------------------------------------------------------------------------- metrics
def test_prometheus_metrics_exported(http, ray_cluster):
    """Counters and histograms reach Ray's Prometheus endpoint (exported every few seconds)."""
    node = ray_cluster._private.worker.global_worker.node
    url = f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"
    assert (
        http.post("/v1/embeddings", json={"model": "tiny", "input": "metrics"}).status_code == 200
    )
    # The names docs/serving.md lists, as Prometheus sees them (Ray's `ray_` prefix, histograms as
    # their `_bucket` series), at the start of a sample line.
    wanted = [
        "ray_qwen3_embed_requests_total{",
        "ray_qwen3_embed_errors_total{",
        "ray_qwen3_embed_tokens_total{",
        "ray_qwen3_embed_inputs_total{",
        "ray_qwen3_embed_request_duration_seconds_bucket{",
        "ray_qwen3_embed_batch_requests_bucket{",
        "ray_qwen3_embed_batch_inputs_bucket{",
        "ray_qwen3_embed_batch_tokens_bucket{",
        "ray_qwen3_embed_queue_wait_seconds_bucket{",
        "ray_qwen3_embed_batch_duration_seconds_bucket{",
    ]
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        try:
            text = httpx.get(url, timeout=5).text
        except httpx.HTTPError:
            text = ""
        # Another app of the session may have exported the names first: wait for this module's
        # error labels too.
        labelled = 'status="413"' in text or 'status="400"' in text
        lines = text.splitlines()
        if labelled and all(any(line.startswith(n) for line in lines) for n in wanted):
            break
        time.sleep(2)
    lines = text.splitlines()
    missing = [name for name in wanted if not any(line.startswith(name) for line in lines)]
    assert not missing, f"not exported: {missing}"
    assert 'status="413"' in text or 'status="400"' in text  # errors are labelled by status


# ------------------------------------------------------------- readiness and timeouts
def test_not_ready_until_loaded_and_no_hung_requests(ray_cluster, tiny_text_model_dir):
    """A model whose replica can never be placed (it asks for 64 CPUs): the ingress is live,
    /ready stays 503 naming it, and a request to it ends in 504 after the handle-call timeout
    instead of hanging."""
    from ray import serve

    port = start_serve_once()
    config = ServeAppConfig.model_validate(
        {
            "models": [
                {
                    "model": str(tiny_text_model_dir),
                    "served_model_name": "unplaceable",
                    "cpus_per_replica": 64,
                }
            ],
            "ingress": {"cpus_per_replica": 0.05, "model_call_timeout_s": 2, "ready_timeout_s": 1},
        }
    )
    # serve._run without blocking: serve.run would wait for a model that never starts.
    serve._run(
        build_application(config, cluster_gpus=0),
        name="serve-not-ready",
        route_prefix="/nr",
        _blocking=False,
    )
    base = f"http://127.0.0.1:{port}/nr"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the proxy routes to the (live) ingress
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the ingress never became reachable")
        not_ready = httpx.get(f"{base}/ready", timeout=30)
        error = assert_openai_error(not_ready, 503, "not_ready")
        assert "unplaceable" in error["message"] and not_ready.headers["retry-after"] == "1"
        started = time.monotonic()
        hung = httpx.post(f"{base}/v1/embeddings", json={"input": "x"}, timeout=30)
        assert_openai_error(hung, 504, "timeout")
        assert time.monotonic() - started < 15
    finally:
        serve.delete("serve-not-ready")


# ------------------------------------------------- requests that vLLM / OpenAI clients send
TASK = "Given a web search query, retrieve relevant passages that answer the query"


def _chat_embedding(openai_client, body: dict):
    """vLLM's chat-embedding request as its docs send it: the `openai` client's raw POST (its
    `embeddings.create` has no `messages`), cast to the SDK's embedding response."""
    from openai.types import CreateEmbeddingResponse

    return openai_client.post("/embeddings", body=body, cast_to=CreateEmbeddingResponse)


def test_chat_form_is_the_official_prompt(openai_client, tiny_text_embedder):
    """`messages` (system = instruction, one user turn) gives the same vector as the same
    text and instruction through `input`, and a conversation without a system turn is a
    document; param names in errors point into the messages."""
    question = "what is ray"
    query = _chat_embedding(
        openai_client,
        {
            "model": "tiny",
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": TASK}]},
                {"role": "user", "content": [{"type": "text", "text": question}]},
            ],
            "encoding_format": "float",
            # what vLLM's own chat-embedding client sends: the defaults, accepted
            "add_special_tokens": False,
            "continue_final_message": False,
        },
    )
    reference = tiny_text_embedder.embed([question], instruction=TASK)
    assert len(query.data) == 1
    assert _max_diff([query.data[0].embedding], reference.embeddings) <= TOL
    assert query.usage.prompt_tokens == reference.sequence_lengths[0]
    document = _chat_embedding(
        openai_client,
        {"model": "tiny", "messages": [{"role": "user", "content": question}], "dimensions": 32},
    )
    assert (
        _max_diff(
            [document.data[0].embedding], tiny_text_embedder.embed([question], dim=32).embeddings
        )
        <= TOL
    )

    import openai

    with pytest.raises(openai.BadRequestError) as info:
        _chat_embedding(
            openai_client,
            {
                "model": "tiny",
                "messages": [{"role": "user", "content": [{"type": "text", "text": " "}]}],
            },
        )
    assert info.value.body["param"] == "messages[0].content[0]", info.value.body
    assert info.value.body["message"].startswith("messages[0].content[0]: "), info.value.body


def test_truncate_prompt_tokens_keeps_the_first_n_tokens(
    http, openai_client, tiny_text_model_dir, truncating_embedder
):
    from qwen3_embed import Embedder

    long_text = "word " * 40
    five = Embedder.from_pretrained(tiny_text_model_dir, device="cpu", max_length=5)
    reference = five.embed([long_text, "ok"], instruction=TASK, truncate=True)
    assert reference.sequence_lengths == [5, 5]  # "ok" as a query is longer than 5 too
    result = openai_client.embeddings.create(
        model="tiny",
        input=[long_text, "ok"],
        encoding_format="float",
        extra_body={"truncate_prompt_tokens": 5, "instruction": TASK},
    )
    assert _max_diff([row.embedding for row in result.data], reference.embeddings) <= TOL
    assert result.usage.prompt_tokens == 10
    # -1: the model's max length, as vLLM; the same as the `truncate` extension.
    whole = http.post(
        "/v1/embeddings",
        json={
            "model": "tiny",
            "input": [long_text],
            "truncate_prompt_tokens": -1,
            "truncation_side": "right",
        },
    )
    assert whole.status_code == 200, whole.text
    full = truncating_embedder.embed([long_text], truncate=True)
    assert _max_diff([whole.json()["data"][0]["embedding"]], full.embeddings) <= TOL
    assert whole.json()["usage"]["prompt_tokens"] == MAX_LENGTH


def test_openai_sdk_raises_bad_request_for_invalid_requests(openai_client):
    """400s with OpenAI's codes, so the SDK raises BadRequestError; 413 only past the body
    limit."""
    import openai

    cases = [
        ({"input": "word " * 100}, "context_length_exceeded"),
        ({"input": "x", "dimensions": 5}, "invalid_dimensions"),
        ({"input": "x", "extra_body": {"dimensions": "32"}}, "invalid_type"),
        ({"input": "x", "extra_body": {"instrucion": "typo"}}, "unknown_parameter"),
    ]
    for kwargs, code in cases:
        with pytest.raises(openai.BadRequestError) as info:
            openai_client.embeddings.create(model="tiny", **kwargs)
        assert info.value.code == code, info.value.body
        assert info.value.type == "invalid_request_error"
    with pytest.raises(openai.APIStatusError) as info:
        openai_client.embeddings.create(model="tiny", input="x" * 250_000)
    assert info.value.status_code == 413 and not isinstance(info.value, openai.BadRequestError)


def test_token_ids_are_refused_with_what_to_do(openai_client, monkeypatch):
    """What LangChain's OpenAIEmbeddings sends by default (tiktoken ids) is a 400 telling the
    user to set check_embedding_ctx_length=False; the same through LangChain itself."""
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        openai_client.embeddings.create(model="tiny", input=[[9906, 1917], [3]])
    assert info.value.code == "token_ids_not_supported"
    assert "check_embedding_ctx_length=False" in info.value.body["message"]

    # LangChain's default path tokenises with tiktoken, whose data files it downloads; offline,
    # a real tiktoken Encoding over raw bytes stands in for cl100k_base (only the ids differ).
    import tiktoken
    from langchain_openai import OpenAIEmbeddings

    byte_level = tiktoken.Encoding(
        "bytes",
        pat_str=r"[\s\S]",
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={},
    )
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: byte_level)
    default = OpenAIEmbeddings(
        model="tiny", base_url=str(openai_client.base_url), api_key=KEY, max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as info:
        default.embed_documents(["hello world"])
    assert "check_embedding_ctx_length=False" in info.value.body["message"]


def test_tokenize_counts_what_embeddings_embed(http, served, tiny_text_embedder):
    text = "the quick brown fox"
    answer = http.post("/tokenize", json={"model": "tiny", "prompt": text})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    (prepared,) = tiny_text_embedder.prepare([text])
    assert body == {
        "count": len(prepared.input_ids),
        "max_model_len": MAX_LENGTH,
        "tokens": prepared.input_ids,
    }
    embedded = http.post("/v1/embeddings", json={"model": "tiny", "input": text}).json()
    assert embedded["usage"]["prompt_tokens"] == body["count"]
    # A query counts with its prompt; the chat form like the same input.
    query = http.post("/tokenize", json={"model": "tiny", "prompt": text, "instruction": TASK})
    (as_query,) = tiny_text_embedder.prepare([text], TASK)
    assert query.json()["tokens"] == as_query.input_ids
    chat = http.post(
        "/tokenize",
        json={
            "model": "tiny",
            "messages": [{"role": "system", "content": TASK}, {"role": "user", "content": text}],
        },
    )
    assert chat.json()["tokens"] == as_query.input_ids
    # Over-long inputs are counted (what a chunker needs), not refused.
    long = http.post("/tokenize", json={"model": "tiny", "prompt": "word " * 100})
    assert long.status_code == 200 and long.json()["count"] > MAX_LENGTH
    assert_openai_error(
        http.post("/tokenize", json={"model": "tiny"}), 400, "missing_required_parameter"
    )
    assert_openai_error(
        http.post("/tokenize", json={"model": "tiny", "prompt": "x", "inputs": "x"}),
        400,
        "unknown_parameter",
    )
    assert_openai_error(
        httpx.post(f"{served}/tokenize", json={"prompt": "x"}, timeout=30), 401, "invalid_api_key"
    )


PARAM_CASES = [
    # (route, body, the error's param, words of its message)
    ("/v1/embeddings", {"input": ["ok", " "]}, "input[1]", "input[1]: text is empty"),
    ("/v1/embeddings", {"input": "ok", "instruction": " "}, "instruction", "instruction must"),
    (
        "/v1/embeddings",
        {"input": ["ok", {"text": "x", "instruction": " "}]},
        "input[1].instruction",
        "instruction must not be empty",
    ),
    ("/v1/embeddings", {"input": [{"text": ""}]}, "input[0].text", "text is empty"),
    ("/tokenize", {"prompt": " "}, "prompt", "prompt: text is empty"),
    ("/tokenize", {"prompt": "x", "instruction": " "}, "instruction", "instruction must"),
    (
        "/v1/embeddings",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": " "}]}]},
        "messages[0].content[0]",
        "messages[0].content[0]: text is empty",
    ),
    (  # two text parts for a text model: what is allowed, not "must be a string, got list"
        "/v1/embeddings",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ]
        },
        "messages[0].content",
        "a text model embeds one text per item (one string, or one text part per message)",
    ),
]


@pytest.mark.parametrize(("route", "body", "param", "words"), PARAM_CASES)
def test_error_param_names_the_field_at_fault(http, route, body, param, words):
    error = assert_openai_error(http.post(route, json={"model": "tiny", **body}), 400)
    assert error["param"] == param, error
    assert words in error["message"], error


def test_readme_generic_client_blocks_run_as_written(served, tiny_text_embedder):
    """docs/serving.md's LangChain and LlamaIndex blocks, as written but for the server's address,
    name and key: their document vectors are the core's documents, their query vectors the
    core's queries. LlamaIndex's newline replacement, which docs/serving.md warns about, is shown to
    matter (the query prompt sent as text through it is not the query vector)."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    blocks = [
        block
        for block in re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
        if block.startswith("# tested: generic-clients ")
    ]
    assert len(blocks) == 2, blocks
    question, passage = "What is the capital of China?", "The capital of China is Beijing."
    query = tiny_text_embedder.embed([question], instruction=TASK).embeddings
    document = tiny_text_embedder.embed([passage]).embeddings
    namespaces = []
    for block in blocks:
        code = (
            block.replace("http://127.0.0.1:8000/v1", f"{served}/v1")
            .replace('"qwen3-0.6b"', '"tiny"')
            .replace('"key1"', f'"{KEY}"')
        )
        namespace: dict = {}
        exec(code, namespace)  # noqa: S102
        assert namespace["task"] == TASK
        namespaces.append(namespace)
    langchain, llamaindex = namespaces
    assert _max_diff(langchain["documents"], document) <= TOL
    assert _max_diff([langchain["query"]], query) <= TOL
    assert _max_diff([llamaindex["document"]], document) <= TOL
    assert _max_diff([llamaindex["query"]], query) <= TOL
    as_text = llamaindex["documents_model"].get_query_embedding(
        f"Instruct: {TASK}\nQuery:{question}"
    )
    assert _max_diff([as_text], query) > 1e-3
