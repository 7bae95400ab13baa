"""The ingress (deployments/ingress.py): model calls with a timeout, backpressure, lost replicas
and readiness, without Ray; then the routes' reliability on the real stack.

Reliability of the online service, fast part: authentication on every route, keys kept out of
answers and logs, and fuzzing of `/v1/embeddings` (hypothesis, schemathesis from the app's own
OpenAPI document, named edge cases, VL media). The real stack: Serve's HTTP proxy on 127.0.0.1,
the ingress and model replicas with the tiny checkpoints.

The contract every fuzz case checks: the status is one the API documents for bad input (or 200),
never 5xx and never a hang; an error body is OpenAI's `{"error": {message, type, param, code}}`;
a 200 body has one well-formed row per input. Loops and example counts are bounded; hypothesis
runs derandomized (the same examples on every run, no example database), so CI is repeatable.
The figures quoted in docs/reliability.md are printed at the end of the module (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_support import (
    api_client,
    assert_openai_error,
    deployed_app,
    image_bytes,
    png_bytes,
)

from deployments.config import ServeAppConfig
from deployments.errors import ApiError
from deployments.ingress import READY_CACHE_S


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------- timeouts / backpressure
class _NeverAnswers:
    """Stands in for a DeploymentResponse whose replica never answers."""

    def __init__(self):
        self.cancelled = False

    def __await__(self):
        return asyncio.get_event_loop().create_future().__await__()

    def cancel(self):
        self.cancelled = True


class _Raises:
    def __init__(self, error: Exception):
        self.error = error

    def __await__(self):
        raise self.error
        yield  # pragma: no cover - makes this a generator

    def cancel(self):
        pass


def test_model_call_timeout_cancels_and_answers_504():
    from deployments.ingress import call_with_timeout

    response = _NeverAnswers()
    with pytest.raises(ApiError) as info:
        run(call_with_timeout(response, 0.2, "model 'm'"))
    assert (info.value.status, info.value.code) == (504, "timeout") and response.cancelled


def test_backpressure_becomes_429_with_retry_after():
    from ray.serve.exceptions import BackPressureError

    from deployments.ingress import call_with_timeout

    error = BackPressureError(
        num_queued_requests=4, max_queued_requests=4, status_code=429, retry_after_s=2.5
    )
    with pytest.raises(ApiError) as info:
        run(call_with_timeout(_Raises(error), 5, "model 'm'"))
    assert (info.value.status, info.value.code) == (429, "queue_full")
    assert info.value.headers == {"Retry-After": "3"}


def test_readiness_is_false_until_every_model_answers():
    from deployments.ingress import probe_ready

    async def loaded():
        return "description"

    async def loading():
        await asyncio.sleep(60)

    async def failed():
        raise RuntimeError("replica crashed")

    states = run(probe_ready({"a": loaded, "b": loading, "c": failed}, 0.2))
    assert states == {"a": True, "b": False, "c": False}


def test_ingress_shutdown_hook_after_a_failed_start():
    """Serve awaits `__del__` also when `__init__` raised (a missing model directory): the hook
    must not add a second, misleading error to the start-up one."""
    import types

    from deployments.ingress import EmbeddingsIngress

    # Our class's own hook (Serve's wrapper subclasses it), called on an object with none of the
    # attributes `__init__` sets; a plain object, so no un-awaited `__del__` runs at collection.
    (user_class,) = [
        klass
        for klass in EmbeddingsIngress.func_or_class.__mro__
        if "Serve's shutdown hook" in (getattr(klass.__dict__.get("__del__"), "__doc__", "") or "")
    ]
    asyncio.run(user_class.__dict__["__del__"](types.SimpleNamespace()))


APP = "serve-reliability"


PREFIX = "/rel"


KEY = "rel-key-" + uuid.uuid4().hex  # unique: a hit in the logs can only come from this run


CANARY = "canary-wrong-key-" + uuid.uuid4().hex


MAX_LENGTH = 32


HIDDEN = 64  # the tiny text model's hidden size


LIMITS = {
    "max_request_bytes": 300_000,
    "max_inputs_per_request": 32,
    "max_chars_per_request": 100_000,
    "max_tokens_per_request": 500,
}


MODEL_CALL_TIMEOUT_S = 20


# What bad input may get; 5xx never (a 5xx is a bug or an outage, not the client's fault).
# 422 is not among them: schema errors are 400s, as OpenAI answers them.
INPUT_STATUSES = {200, 400, 404, 413}


FIGURES: Counter[str] = Counter()  # printed at teardown: the numbers docs/reliability.md quotes


def _fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,  # an HTTP round trip through Ray; hangs are caught by the client timeout
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def print_figures():
    yield
    print("\n[reliability figures]", dict(sorted(FIGURES.items())))


@pytest.fixture(scope="module")
def served(ray_cluster, tiny_text_model_dir: Path, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("rel-keys") / "keys"
    key_file.write_text(f"{KEY}\n")
    config = ServeAppConfig.model_validate(
        {
            "models": [
                {
                    "model": str(tiny_text_model_dir),
                    "served_model_name": "tiny",
                    "max_length": MAX_LENGTH,
                    "cpus_per_replica": 0.3,
                    "batching": {"max_batch_size": 8, "batch_wait_ms": 2},
                }
            ],
            "limits": LIMITS,
            "auth": {"api_key_file": str(key_file)},
            "ingress": {"cpus_per_replica": 0.05, "model_call_timeout_s": MODEL_CALL_TIMEOUT_S},
        }
    )
    with deployed_app(config, APP, PREFIX) as base:
        yield base


@pytest.fixture(scope="module")
def http(served):
    with api_client(served, KEY) as client:
        yield client


def _post(client: httpx.Client, body: Any) -> httpx.Response:
    """POST a body: bytes as they are, anything else as JSON (NaN / Infinity allowed: Python's
    json writes them, as some clients do)."""
    content = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    started = time.monotonic()
    response = client.post(
        "/v1/embeddings", content=content, headers={"Content-Type": "application/json"}
    )
    # No hang: well inside the ingress's model-call timeout (and the proxy's 60 s).
    assert time.monotonic() - started < MODEL_CALL_TIMEOUT_S, body if len(content) < 500 else ""
    return response


def _items(body: Any) -> int | None:
    """How many rows a 200 must have, when the body is an object with a usable `input`."""
    if not isinstance(body, dict):
        return None
    raw = body.get("input")
    return 1 if isinstance(raw, str) else len(raw) if isinstance(raw, list) else None


def check_answer(
    response: httpx.Response, body: Any, kind: str, allowed=INPUT_STATUSES, hidden: int = HIDDEN
) -> None:
    """The fuzz contract (module docstring); counts the answer for the figures."""
    FIGURES[f"{kind}: examples"] += 1
    FIGURES[f"{kind}: {response.status_code}"] += 1
    assert response.status_code in allowed, (response.status_code, response.text[:500])
    if response.status_code != 200:
        assert_openai_error(response, response.status_code)
        return
    if isinstance(body, bytes):  # a 200: the server parsed these bytes as a JSON request
        body = json.loads(body)
    payload = response.json()
    assert payload["object"] == "list" and payload["usage"]["total_tokens"] > 0, payload
    rows = payload["data"]
    expected = _items(body)
    if expected is not None:
        assert len(rows) == expected
    assert [row["index"] for row in rows] == list(range(len(rows)))
    dims = body.get("dimensions") if isinstance(body, dict) else None
    for row in rows:
        vector = row["embedding"]
        if isinstance(vector, str):  # encoding_format=base64: little-endian float32
            vector = np.frombuffer(base64.b64decode(vector), dtype="<f4").tolist()
        assert len(vector) == (dims or hidden)
        assert all(math.isfinite(value) for value in vector)


# ------------------------------------------------------------------------------- auth
# Routes that answer without a key, by design: liveness, readiness (booleans only; its model
# probes are shared and rate-bounded, see the /ready test) and FastAPI's API documentation.
PUBLIC = {("GET", "/health"), ("GET", "/ready")}


DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def test_every_route_that_touches_a_model_needs_a_valid_key(served, http):
    """Every operation in the app's own OpenAPI document (so also any route added later) except
    /health and /ready answers 401 in OpenAI's shape without a key, with a wrong key, with the key
    in another scheme; with the key it does not answer 401."""
    document = httpx.get(f"{served}/openapi.json", timeout=30).json()
    operations = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert ("POST", "/v1/embeddings") in operations and ("GET", "/v1/models") in operations
    assert not DOCS & {path for _, path in operations}
    guarded = sorted(operations - PUBLIC)
    # a valid body per route: /tokenize takes vLLM's `prompt`, the rerank routes a query and
    # documents, /score vLLM's text_1/text_2, the others `input`
    rerank = {"model": "tiny", "query": "hello", "documents": ["there"]}
    score = {"model": "tiny", "text_1": "hello", "text_2": "there"}
    bodies = {
        "/tokenize": {"model": "tiny", "prompt": "hello"},
        **{path: rerank for path in ("/rerank", "/v1/rerank", "/v2/rerank")},
        **{path: score for path in ("/score", "/v1/score")},
    }
    bad_headers = [
        {},
        {"Authorization": f"Bearer {CANARY}"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": KEY},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {KEY[:-1]}"},
        {"Authorization": f"Bearer {KEY}x"},
    ]
    for method, path in guarded:
        body = bodies.get(path, {"model": "tiny", "input": "hello"})
        for headers in bad_headers:
            response = httpx.request(
                method, f"{served}{path}", json=body if method == "POST" else None,
                headers=headers, timeout=30,
            )  # fmt: skip
            error = assert_openai_error(response, 401, "invalid_api_key")
            assert response.headers["www-authenticate"] == "Bearer"
            assert KEY not in response.text and CANARY not in error["message"]
            FIGURES["auth: refused without a valid key"] += 1
        allowed = http.request(method, path, json=body if method == "POST" else None)
        if path in bodies and path != "/tokenize":
            # past the key check: this app serves no reranker, so the model is refused by task
            assert_openai_error(allowed, 400, "model_task_mismatch")
        else:
            assert allowed.status_code == 200, (method, path, allowed.text)
    for method, path in sorted(PUBLIC):
        assert httpx.request(method, f"{served}{path}", timeout=30).status_code == 200


def test_unauthenticated_ready_flood_costs_each_model_one_call_a_second(served):
    """/ready is open (probes) but does not let anonymous callers load the models: concurrent
    calls share one probe and its answer is reused for READY_CACHE_S, so N calls cost the model
    at most one `describe` per READY_CACHE_S (+1 in flight), not N."""
    from ray import serve

    handle = serve.get_deployment_handle("EmbeddingModel-tiny", app_name=APP)
    before = handle.stats.remote().result(timeout_s=30)["describe_calls"]

    async def flood(count: int) -> list[int]:
        async with httpx.AsyncClient(base_url=served, timeout=30) as client:
            answers = await asyncio.gather(*(client.get("/ready") for _ in range(count)))
        return [answer.status_code for answer in answers]

    started = time.monotonic()
    statuses = asyncio.run(flood(120)) + asyncio.run(flood(120))
    elapsed = time.monotonic() - started
    after = handle.stats.remote().result(timeout_s=30)["describe_calls"]
    assert statuses == [200] * 240
    bound = math.ceil(elapsed / READY_CACHE_S) + 1
    assert after - before <= bound, (after - before, bound, elapsed)
    FIGURES["auth: anonymous /ready calls"] += 240
    FIGURES["auth: model describe calls they caused"] += after - before


def _log_files(ray_cluster) -> list[Path]:
    node = ray_cluster._private.worker.global_worker.node
    return [path for path in Path(node.get_logs_dir_path()).rglob("*") if path.is_file()]


def _logs_contain(files: list[Path], needles: list[bytes]) -> set[bytes]:
    found: set[bytes] = set()
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:  # rotated or removed while scanning
            continue
        found |= {needle for needle in needles if needle in data}
    return found


def test_keys_never_appear_in_answers_or_logs(served, http, ray_cluster):
    """The valid key and a wrong one go through success, input errors, 401s, an unknown route;
    neither comes back in any answer nor lands in any log file of this Ray session (proxy,
    controller, replicas, workers). The access-log lines of these very requests (found by the
    request id the proxy returns) must be in the scanned files first, so that the scan cannot
    pass vacuously."""
    responses = [
        http.post("/v1/embeddings", json={"model": "tiny", "input": "fine"}),
        http.post("/v1/embeddings", json={"model": "tiny", "input": 5}),
        http.post("/v1/embeddings", json={"model": "nope", "input": "x"}),
        http.post("/v1/embeddings", content=b"{not json"),
        http.get("/v1/models"),
        http.get("/v1/no-such-route"),
    ]
    for header in (f"Bearer {CANARY}", f"bearer {CANARY}", CANARY, f"Bearer {KEY} {CANARY}"):
        for method, path in (("POST", "/v1/embeddings"), ("GET", "/v1/models")):
            responses.append(
                httpx.request(
                    method,
                    f"{served}{path}",
                    json={"input": "x"} if method == "POST" else None,
                    headers={"Authorization": header},
                    timeout=30,
                )  # fmt: skip
            )
    assert [r.status_code for r in responses[:6]] == [200, 400, 404, 400, 200, 404]
    assert all(r.status_code == 401 for r in responses[6:])
    for response in responses:
        answer = response.text + json.dumps(dict(response.headers))
        assert KEY not in answer and CANARY not in answer

    request_ids = [response.headers["x-request-id"].encode() for response in responses]
    secrets = [KEY.encode(), CANARY.encode()]
    found: set[bytes] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = _logs_contain(_log_files(ray_cluster), request_ids + secrets)
        if set(request_ids) <= found:
            break
        time.sleep(1)  # logs are written asynchronously
    missing = set(request_ids) - found
    assert not missing, f"access-log lines not found, the scan would prove nothing: {missing}"
    assert not found & set(secrets), "an API key was written to a log file"
    FIGURES["auth: requests whose log lines were scanned for keys"] = len(request_ids)
    FIGURES["auth: log files scanned"] = len(_log_files(ray_cluster))


def _actor_died() -> BaseException:
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    return ActorDiedError(), ActorUnavailableError("unreachable", b"\0" * 16)


@pytest.mark.parametrize("which", [0, 1], ids=["actor-died", "actor-unavailable"])
def test_a_replica_lost_mid_request_is_503_with_retry_after(which):
    """Was a 500 ("internal server error") before: see test_serve_faults for the real kill."""
    from deployments.errors import ApiError
    from deployments.ingress import call_with_timeout

    with pytest.raises(ApiError) as info:
        asyncio.run(call_with_timeout(_Raises(_actor_died()[which]), 5, "model 'm'", 2.5))
    assert (info.value.status, info.value.code) == (503, "model_unavailable")
    assert info.value.headers == {"Retry-After": "3"}


def test_undeployable_model_503_has_retry_after():
    from ray.serve._private.common import DeploymentID
    from ray.serve.exceptions import DeploymentUnavailableError

    from deployments.errors import ApiError
    from deployments.ingress import call_with_timeout

    error = DeploymentUnavailableError(DeploymentID(name="EmbeddingModel-m", app_name="a"))
    with pytest.raises(ApiError) as info:
        asyncio.run(call_with_timeout(_Raises(error), 5, "model 'm'", 1))
    assert info.value.status == 503 and info.value.headers == {"Retry-After": "1"}


# --------------------------------------------------------------------- named edge cases
def _nested(depth: int, opener: str = "[", closer: str = "]") -> bytes:
    return ('{"input":' + opener * depth + closer * depth + "}").encode()


EDGE_CASES: list[tuple[str, Any, int]] = [
    # (id, body (bytes are sent as they are), status)
    ("huge-string-over-body-limit", {"input": "x" * 400_000}, 413),
    ("huge-string-over-char-limit", {"input": "é" * 120_000}, 413),
    ("huge-list-of-strings", {"input": ["a"] * 33}, 400),
    ("over-token-limit-truncated", {"input": ["word " * 200] * 20, "truncate": True}, 400),
    ("long-input-400-unless-truncate", {"input": "word " * 100}, 400),
    ("long-input-truncated", {"input": "word " * 100, "truncate": True}, 200),
    ("nested-100-000-arrays", _nested(100_000), 400),
    ("nested-150-objects", _nested(150, '{"a":', "}"), 400),
    ("nested-input-lists", {"input": [[[["deep"]]]]}, 400),
    ("dimensions-nan", b'{"input": "x", "dimensions": NaN}', 400),
    ("dimensions-infinity", b'{"input": "x", "dimensions": -Infinity}', 400),
    ("dimensions-float", {"input": "x", "dimensions": 32.0}, 400),
    ("dimensions-negative", {"input": "x", "dimensions": -1}, 400),
    ("dimensions-zero", {"input": "x", "dimensions": 0}, 400),
    ("dimensions-2**63", {"input": "x", "dimensions": 2**63}, 400),
    ("dimensions-4300-digits", b'{"input": "x", "dimensions": ' + b"9" * 4300 + b"}", 400),
    ("dimensions-5000-digits", b'{"input": "x", "dimensions": ' + b"9" * 5000 + b"}", 400),
    ("dimensions-string", {"input": "x", "dimensions": "32"}, 400),
    ("dimensions-bool", {"input": "x", "dimensions": True}, 400),
    ("dimensions-valid", {"input": "x", "dimensions": 32}, 200),
    ("input-number", {"input": 5}, 400),
    ("input-object", {"input": {"text": "x"}}, 400),
    ("input-null", {"input": None}, 400),
    ("input-token-ids", {"input": [[1, 2, 3]]}, 400),
    ("input-bool-item", {"input": [True]}, 400),
    ("model-number", {"input": "x", "model": 7}, 400),
    ("model-unknown-long", {"input": "x", "model": "m" * 50_000}, 404),
    ("encoding-format-unknown", {"input": "x", "encoding_format": "int8"}, 400),
    ("unknown-field", {"input": "x", "inptu": "x"}, 400),
    ("body-array", [{"input": "x"}], 400),
    ("body-string", "x", 400),
    ("body-empty", b"", 400),
    ("body-not-json", b"input=x", 400),
    ("invalid-utf8-in-string", b'{"input": "\xff\xfe\xc3\x28"}', 400),
    ("invalid-utf8-overlong", b'{"input": "\xc0\xaf"}', 400),
    ("lone-surrogate-escape", b'{"input": "a\\ud800b"}', 400),
    ("nul-in-text", {"input": "a\u0000b"}, 200),
    ("utf8-bom", b'\xef\xbb\xbf{"input": "x"}', 400),
    ("whitespace-only", {"input": " \t\n"}, 400),
    ("image-on-text-model", {"input": [{"image": "data:image/png;base64,@@@"}]}, 400),
    ("invalid-base64-on-text-model", {"input": [{"text": "x", "image": "data:;base64,%"}]}, 400),
]


@pytest.mark.parametrize(
    ("body", "status"), [c[1:] for c in EDGE_CASES], ids=[c[0] for c in EDGE_CASES]
)
def test_named_edge_cases(http, body, status):
    response = _post(http, body)
    assert response.status_code == status, response.text[:300]
    check_answer(response, body, "named edge cases")


# ------------------------------------------------------------------------ hypothesis
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)


JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


HUGE_TEXT = st.builds(
    lambda char, count: char * count,
    st.sampled_from(["a", "é", "語", "😀", " ", "\x00", "word "]),
    st.integers(0, 200_000),
)


ODD_TEXT = st.text(
    alphabet=st.characters(codec=None, categories=["Cs", "Cc", "Cf", "Zs", "Mn", "So"]),
    max_size=30,
)  # lone surrogates, controls, format characters, combining marks, symbols


TEXT = st.text(max_size=60) | ODD_TEXT | HUGE_TEXT


ITEM = (
    TEXT
    | st.fixed_dictionaries(
        {},
        optional={
            "text": TEXT | JSON_VALUES,
            "instruction": TEXT | JSON_VALUES,
            "image": st.text(max_size=40) | JSON_VALUES,
            "video": st.lists(st.text(max_size=20), max_size=3) | JSON_VALUES,
            "audio": JSON_VALUES,
        },
    )
    | JSON_VALUES
)


BODIES = st.fixed_dictionaries(
    {},
    optional={
        "input": TEXT | st.lists(ITEM, max_size=6) | st.lists(TEXT, max_size=40) | JSON_VALUES,
        "model": st.sampled_from(["tiny", None]) | st.text(max_size=300) | JSON_VALUES,
        "dimensions": st.none()
        | st.integers(-3, 70)
        | st.integers()
        | st.integers(min_value=2**62, max_value=2**200)
        | st.floats(allow_nan=True, allow_infinity=True)
        | JSON_VALUES,
        "encoding_format": st.sampled_from(["float", "base64", None]) | st.text(max_size=8),
        "user": st.text(max_size=20) | JSON_VALUES,
        "instruction": TEXT | JSON_VALUES,
        "truncate": st.booleans() | JSON_VALUES,
        "extra": JSON_VALUES,
    },
)


# Mostly-valid bodies too, so the fuzz also reaches the model (valid shapes, odd content).
NEAR_VALID = st.fixed_dictionaries(
    {
        "input": st.text(min_size=1, max_size=80)
        | st.lists(st.text(max_size=80), min_size=1, max_size=8)
    },
    optional={
        "model": st.just("tiny"),
        "dimensions": st.integers(0, 80),
        "encoding_format": st.sampled_from(["float", "base64"]),
        "instruction": st.text(max_size=40),
        "truncate": st.booleans(),
    },
)


@_fuzz_settings(500)
@given(body=BODIES | NEAR_VALID)
def test_fuzz_json_bodies(http, body):
    """Any JSON object (right and wrong types, huge and odd strings, NaN / huge / negative
    dimensions, nested values, unknown keys) gets a documented status in the documented shape."""
    check_answer(_post(http, body), body, "hypothesis JSON bodies")


def _flip(data: bytes, position: int, value: int) -> bytes:
    if not data:
        return bytes([value])
    position %= len(data)
    return data[:position] + bytes([value]) + data[position + 1 :]


RAW_BODIES = (
    st.binary(max_size=2000)
    | st.builds(
        lambda junk: b'{"input": "' + junk + b'"}', st.binary(min_size=1, max_size=40)
    )  # invalid UTF-8 inside a string
    | st.builds(
        _flip,
        st.sampled_from(
            [b'{"input": "hello", "dimensions": 32}', b'{"input": ["a", "b"], "model": "tiny"}']
        ),
        st.integers(0, 100),
        st.integers(0, 255),
    )
    | st.builds(
        _nested,
        st.integers(1, 400_000),
        st.sampled_from(["[", '{"a":', '{"input":[']),
        st.sampled_from(["]", "}"]),
    )
)


@_fuzz_settings(300)
@given(body=RAW_BODIES)
def test_fuzz_raw_bytes(http, body):
    """Arbitrary bytes, invalid UTF-8, one flipped byte in a valid body, nesting up to 400,000
    levels (past the body limit): documented statuses only, never a 5xx or a hang."""
    check_answer(_post(http, body), body, "hypothesis raw bodies")


# ----------------------------------------------------------------------- schemathesis
@pytest.fixture(scope="module")
def openapi_operations(served):
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{served}/openapi.json", timeout=30)
    return {
        "POST /v1/embeddings": schema["/v1/embeddings"]["POST"],
        "GET /v1/models": schema["/v1/models"]["GET"],
        "POST /tokenize": schema["/tokenize"]["POST"],
    }


@_fuzz_settings(300)
@given(data=st.data())
def test_schemathesis_from_the_apps_openapi(served, openapi_operations, data):
    """Cases generated by schemathesis from the OpenAPI document the app serves (request schema
    and declared error answers, see deployments/schemas.py:embeddings_openapi), positive and
    negative: no server error, schema-violating bodies are refused with 4xx, and every answer
    conforms to the document (errors: OpenAI's shape)."""
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        negative_data_rejection,
        response_schema_conformance,
    )

    name = data.draw(st.sampled_from(sorted(openapi_operations)), label="operation")
    modes = [GenerationMode.POSITIVE]
    if name.startswith("POST"):  # GET /v1/models has no parameters to get wrong
        modes.append(GenerationMode.NEGATIVE)
    mode = data.draw(st.sampled_from(modes), label="mode")
    case = data.draw(openapi_operations[name].as_strategy(generation_mode=mode))
    headers = {"Authorization": f"Bearer {KEY}"}
    started = time.monotonic()
    response = case.call(base_url=served, headers=headers, timeout=60)
    assert time.monotonic() - started < MODEL_CALL_TIMEOUT_S
    case.validate_response(
        response,
        checks=[not_a_server_error, negative_data_rejection, response_schema_conformance],
        headers=headers,
    )
    FIGURES[f"schemathesis {name} {mode.value}: examples"] += 1
    FIGURES[f"schemathesis {name} {mode.value}: {response.status_code}"] += 1
    assert response.status_code in INPUT_STATUSES, (response.status_code, response.text[:300])
    if response.status_code != 200:
        error = json.loads(response.content)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], error


# ------------------------------------------------------------------------ VL media
VL_APP = "serve-reliability-vl"


VL_PREFIX = "/relvl"


MAX_PIXELS = 4_000_000


VL_HIDDEN = 128  # the tiny VL model's hidden size


@pytest.fixture(scope="module")
def served_vl(ray_cluster, tiny_vl_model_dir: Path):
    config = ServeAppConfig.model_validate(
        {
            "models": [
                {
                    "model": str(tiny_vl_model_dir),
                    "served_model_name": "tiny-vl",
                    "cpus_per_replica": 0.4,
                }
            ],
            "media": {
                "max_media_bytes": 2_000_000,
                "max_image_pixels": MAX_PIXELS,
                "max_media_per_request": 8,
            },
            "ingress": {"cpus_per_replica": 0.05, "model_call_timeout_s": MODEL_CALL_TIMEOUT_S},
        }
    )
    with deployed_app(config, VL_APP, VL_PREFIX) as base, api_client(base) as client:
        yield client


def data_uri(data: bytes, mime: str = "application/octet-stream") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _animated_gif() -> bytes:
    from PIL import Image

    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (32, 24), color) for color in colors]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _video(frames: int, fmt: str) -> bytes:
    """A video container with `frames` frames; 0 = a header and a video stream, no frame."""
    import av

    buffer = io.BytesIO()
    container = av.open(buffer, "w", format=fmt)
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    container.start_encoding()
    for index in range(frames):
        frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), index * 40, np.uint8), "rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return buffer.getvalue()


@functools.cache
def _media(name: str) -> bytes:
    """Media for the VL cases, built on first use (PyAV only when a VL test runs)."""
    builders = {
        # 400 Mpx declared, 50 MB decoded, ~50 KB on the wire
        "bomb": lambda: image_bytes(20_000, 20_000, "1"),
        "under-limit": lambda: image_bytes(2_000, 1_999),  # just under MAX_PIXELS: decoded, resized
        "1x1": lambda: image_bytes(1, 1),
        "1x400": lambda: image_bytes(1, 400),
        "gif": _animated_gif,
        "png": lambda: png_bytes(64, 48),
        "avi-0": lambda: _video(0, "avi"),
        "avi-1": lambda: _video(1, "avi"),
        "avi-3": lambda: _video(3, "avi"),
        "mkv-0": lambda: _video(0, "matroska"),
        "mp4-0": lambda: _video(0, "mp4"),
        "cmyk-jpeg": lambda: image_bytes(16, 16, "CMYK", "JPEG"),
        "16-bit": lambda: image_bytes(16, 16, "I;16"),
    }
    return builders[name]()


def _uri(name: str, mime: str = "application/octet-stream") -> str:
    return data_uri(_media(name), mime)


# id -> (API item, status, the core's item when the answer must equal the core's); lazy.
MEDIA_CASES: dict[str, Callable[[], tuple[dict[str, Any], int, dict[str, Any] | None]]] = {
    "png-decompression-bomb": lambda: ({"image": _uri("bomb", "image/png")}, 413, None),
    "png-bomb-as-video-frame": lambda: ({"video": [_uri("bomb"), _uri("png")]}, 413, None),
    "image-just-under-pixel-limit": lambda: (
        {"image": _uri("under-limit")}, 200, {"image": _media("under-limit")}
    ),
    "image-1x1": lambda: (
        {"text": "dot", "image": _uri("1x1")}, 200, {"text": "dot", "image": _media("1x1")}
    ),
    "image-1x400-aspect-ratio": lambda: ({"image": _uri("1x400")}, 400, None),
    "animated-gif-as-image": lambda: (
        {"image": _uri("gif", "image/gif")}, 200, {"image": _media("gif")}
    ),
    "animated-gif-as-video": lambda: (
        {"video": _uri("gif", "image/gif")}, 200, {"video": _media("gif")}
    ),
    "video-zero-frames-avi": lambda: ({"video": _uri("avi-0", "video/x-msvideo")}, 400, None),
    "video-zero-frames-mkv": lambda: ({"video": _uri("mkv-0", "video/x-matroska")}, 400, None),
    "video-no-stream-mp4": lambda: ({"video": _uri("mp4-0", "video/mp4")}, 400, None),
    "video-one-frame": lambda: ({"video": _uri("avi-1")}, 400, None),
    "video-three-frames": lambda: ({"video": _uri("avi-3")}, 200, {"video": _media("avi-3")}),
    "video-empty-payload": lambda: ({"video": "data:video/mp4;base64,"}, 400, None),
    "video-empty-frame-list": lambda: ({"video": []}, 400, None),
    "video-png-bytes": lambda: ({"video": _uri("png")}, 400, None),
    "image-truncated-png": lambda: ({"image": data_uri(_media("png")[:80])}, 400, None),
    "image-invalid-base64": lambda: ({"image": "data:image/png;base64,iVBOR!w0K"}, 400, None),
    "image-base64-bad-padding": lambda: ({"image": "data:image/png;base64,iVBORw0"}, 400, None),
    "image-not-a-data-uri": lambda: ({"image": "iVBORw0KGgo="}, 400, None),
    "image-random-bytes": lambda: ({"image": data_uri(bytes(range(256)) * 4)}, 400, None),
    "image-over-byte-limit": lambda: ({"image": data_uri(b"\0" * 2_100_000)}, 413, None),
    "image-number": lambda: ({"image": 5}, 400, None),
    "image-cmyk-jpeg": lambda: ({"image": _uri("cmyk-jpeg")}, 200, None),
    "image-16-bit": lambda: ({"image": _uri("16-bit")}, 200, None),
}  # fmt: skip


@pytest.mark.requires_vl
@pytest.mark.parametrize("case", sorted(MEDIA_CASES))
def test_vl_media_edge_cases(served_vl, tiny_vl_embedder, case):
    """Decompression bombs are refused from the header (413) before any decoding; a 1x1 image
    and an animated GIF embed (the GIF's first frame, as the core does); videos with zero or one
    frame, undecodable or mislabelled media and bad base64 are 400; a 200 equals the core."""
    item, status, reference = MEDIA_CASES[case]()
    body = {"model": "tiny-vl", "input": [item]}
    response = _post(served_vl, body)
    assert response.status_code == status, response.text[:300]
    check_answer(response, body, "VL named media cases", {200, 400, 413}, VL_HIDDEN)
    if reference is not None:
        row = np.asarray(response.json()["data"][0]["embedding"], dtype=np.float32)
        expected = tiny_vl_embedder.embed([reference]).embeddings.numpy()[0]
        assert float(np.max(np.abs(row - expected))) <= 1e-5


MEDIA_BYTES = (
    st.binary(max_size=3000)
    | st.builds(
        lambda seed, position, value: _flip(_media(seed), position, value),
        st.sampled_from(["png", "gif", "avi-3"]),
        st.integers(0, 5000),
        st.integers(0, 255),
    )
    | st.builds(
        lambda seed, cut: _media(seed)[:cut],
        st.sampled_from(["png", "gif", "avi-3"]),
        st.integers(0, 1200),
    )
)


@pytest.mark.requires_vl
@_fuzz_settings(120)
@given(data=MEDIA_BYTES, key=st.sampled_from(["image", "video", "frames"]))
def test_fuzz_vl_media_bytes(served_vl, data, key):
    """Random bytes, one flipped byte of a valid PNG / GIF / AVI, truncated media, as an image,
    a video or video frames: 200, 400 or 413 in OpenAI's shape; never a 5xx (a decoder crash
    would surface as 500 or, if it killed the replica, 503)."""
    uri = data_uri(data)
    item = {"video": [uri, uri]} if key == "frames" else {key: uri}
    body = {"model": "tiny-vl", "input": [item]}
    check_answer(_post(served_vl, body), body, "hypothesis VL media", {200, 400, 413}, VL_HIDDEN)
