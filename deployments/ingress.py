"""The HTTP ingress deployment: OpenAI-compatible routes in front of the model deployments.

It authenticates, bounds and parses requests, routes them by `model`, turns media into bytes
(fetching URLs under the SSRF rules), and calls the model deployment through its handle with a
timeout. It never loads torch (from the core it imports only the torch-free `data_uri` and
`errors`): tokenising and embedding happen in the model replicas.

With `ingress.colocate` (single-model apps) the same routes are served by the model replicas
themselves: this class then holds the model in-process (`ModelServer`) and takes the model
deployment's resources, which removes one Ray hop (and its pickling) from every request.
"""

# No `from __future__ import annotations` here: FastAPI (through Serve's class-based views)
# inspects the route signatures at run time and needs real annotations, not strings.
import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from .bounded_read import read_bounded
from .chat import ChatItem, request_chat_form, resolve_truncation
from .config import ServeAppConfig
from .errors import ApiError, install_error_handlers, validation_error
from .inputs import find_media, load_media, split_input
from .media_fetch import SafeMediaFetcher
from .metrics import IngressMetrics
from .model_calls import (  # noqa: F401 (call_with_timeout: re-exported, tests use it from here)
    HandleCaller,
    LocalCaller,
    ModelCaller,
    call_with_timeout,
    retry_after,
)
from .protocol import EmbedFailure, EmbedJob, EmbedReply, ModelDescription, TokenizeReply
from .render import INLINE_RENDER_MAX_VALUES, render_embeddings
from .rerank_protocol import RerankReply
from .rerank_routes import check_truncation, load_pairs, rerank_form, score_form
from .rerank_schemas import RerankRequest, ScoreRequest, render_rerank, render_score
from .schemas import EmbeddingRequest, TokenizeRequest, embeddings_openapi, models_response
from .security import ApiKeyChecker
from .vector_encoding import vector_encoding

BATCH_REQUESTS_HEADER = "x-qwen3-embed-batch-requests"
BATCH_INPUTS_HEADER = "x-qwen3-embed-batch-inputs"
# Standard Server-Timing (durations in ms) of each stage of the request path, when
# `ingress.timing_header` is on: what the benchmark reports as each hop's share.
TIMING_HEADER = "server-timing"
# /ready answers without a key (probes), so its model probes are shared: concurrent callers await
# one probe, and its answer is reused this long. Unauthenticated callers thus never cost a model
# more than one `describe` call per second, however many they are.
READY_CACHE_S = 1.0

app = FastAPI(
    title="qwen3-embed",
    description="OpenAI-compatible embeddings for Qwen3-Embedding and Qwen3-VL-Embedding.",
)
install_error_handlers(app)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (before it is all read)."""
    too_large = ApiError(
        413, f"the request body is larger than the limit of {limit} bytes", code="request_too_large"
    )
    declared = request.headers.get("content-length", "")
    return await read_bounded(request.stream(), declared, limit, too_large)


def server_timing(**durations_s: float) -> str:
    """`name;dur=ms, ...` (RFC Server-Timing; names with '_' written with '-')."""
    return ", ".join(
        f"{name.replace('_', '-')};dur={seconds * 1000:.3f}"
        for name, seconds in durations_s.items()
    )


def parse_request(body: bytes, schema: type[Any] = EmbeddingRequest) -> Any:
    try:
        return schema.model_validate_json(body)
    except ValidationError as error:
        raise validation_error(error.errors()) from None


def failure_error(reply: EmbedFailure) -> ApiError:
    headers = {}
    if reply.retry_after_s is not None:
        headers = retry_after(reply.retry_after_s)
    return ApiError(
        reply.status, reply.message, code=reply.code, param=reply.param, headers=headers
    )


async def probe_ready(
    probes: Mapping[str, Callable[[], Awaitable[Any]]], timeout_s: float
) -> dict[str, bool]:
    """Which named probes answer within `timeout_s` (all run concurrently). A probe that fails or
    is late counts as not ready."""

    async def one(probe: Callable[[], Awaitable[Any]]) -> bool:
        try:
            await asyncio.wait_for(probe(), timeout_s)
            return True
        except Exception:  # not ready, whatever the reason: readiness only says yes or no
            return False

    names = list(probes)
    answers = await asyncio.gather(*(one(probes[name]) for name in names))
    return dict(zip(names, answers, strict=True))


@serve.deployment
@serve.ingress(app)
class EmbeddingsIngress:
    def __init__(self, config: ServeAppConfig, models: dict[str, DeploymentHandle] | None) -> None:
        """`models`: a handle per served model, or None with `ingress.colocate`: the one model
        is loaded here, in this replica."""
        self.config = config
        self._local: Any = None
        self._tasks = {model.name: model.task for model in config.models}
        if models is None:
            from .model_deployment import ModelServer
            from .rerank_deployment import RerankServer

            (model,) = config.models
            server = RerankServer if model.task == "rerank" else ModelServer
            self._local = server(model, config.limits, config.media)
            self._models: dict[str, ModelCaller] = {
                model.name: LocalCaller(
                    self._local, f"model {model.name!r}", config.ingress.model_call_timeout_s
                )
            }
        else:
            self._models = {
                name: HandleCaller(
                    handle,
                    f"model {name!r}",
                    config.ingress.model_call_timeout_s,
                    config.ingress.retry_after_s,
                )
                for name, handle in models.items()
            }
        # int8 / uint8 ranges per served model (`--calibration`), for `embed_dtype`.
        self._calibration = {
            model.name: model.calibration_ranges
            for model in config.models
            if model.calibration_ranges is not None
        }
        # Raises when a configured key source is empty: the replica fails rather than run open.
        self._auth = ApiKeyChecker.from_config(config.auth)
        self._fetcher = SafeMediaFetcher(config.media) if config.media.allow_url_fetch else None
        self._metrics = IngressMetrics()
        self._descriptions: dict[str, ModelDescription] = {}
        self._created = int(time.time())
        self._ready_probe: asyncio.Future[dict[str, bool]] | None = None
        self._ready_answer: tuple[float, dict[str, bool]] | None = None  # (monotonic, states)

    # ------------------------------------------------------------------ routes
    @app.post("/v1/embeddings", openapi_extra=embeddings_openapi())
    async def create_embeddings(self, request: Request) -> Response:
        started = time.perf_counter()
        called = started
        label = "unknown"  # metric label: never a client-supplied string (unbounded cardinality)
        chat: ChatItem | None = None  # the chat form's conversation (vLLM's `messages`)
        try:
            self._authorize(request)
            body = await read_body(request, self.config.limits.max_request_bytes)
            parsed = parse_request(body)
            name, model = self._route(parsed.model, "embed")
            label = name
            chat = request_chat_form(parsed, parsed.input)
            raw = [chat.item] if chat is not None else parsed.input
            items, description = await self._items(raw, parsed.instruction, name, model)
            truncate, max_tokens = resolve_truncation(
                parsed.truncate, parsed.truncate_prompt_tokens, description.max_length
            )
            encoding = vector_encoding(  # checked before the model is called
                parsed.encoding_format,
                parsed.embed_dtype,
                parsed.endianness,
                parsed.dimensions or description.hidden_size,
                self._calibration.get(name),
            )
            job = EmbedJob(
                tuple(items), parsed.instruction, parsed.dimensions, truncate, max_tokens
            )
            called = time.perf_counter()
            reply = await model.embed(job)
            if isinstance(reply, EmbedFailure):
                raise failure_error(reply)
            assert isinstance(reply, EmbedReply)
        except ApiError as error:
            self._metrics.record(label, error.status, error.code, time.perf_counter() - started)
            if chat is not None:  # name the messages' parts, not the item they became
                raise chat.translate(error) from None
            raise
        except Exception:
            self._metrics.record(label, 500, "internal_error", time.perf_counter() - started)
            raise
        answered = time.perf_counter()
        if reply.embeddings.size > INLINE_RENDER_MAX_VALUES:
            # Large answers are CPU work: off the event loop, which keeps serving meanwhile.
            content = await asyncio.to_thread(
                render_embeddings, name, reply.embeddings, reply.total_tokens, encoding
            )
        else:
            content = render_embeddings(name, reply.embeddings, reply.total_tokens, encoding)
        finished = time.perf_counter()
        self._metrics.record(name, 200, None, finished - started)
        self._metrics.record_success(name, len(items), reply.total_tokens)
        headers = {}
        if self.config.ingress.batch_stats_header:
            headers = {
                BATCH_REQUESTS_HEADER: str(reply.batch_requests),
                BATCH_INPUTS_HEADER: str(reply.batch_inputs),
            }
        if self.config.ingress.timing_header:
            headers[TIMING_HEADER] = server_timing(
                ingress_in=called - started,
                model_call=answered - called,
                model=reply.model_s,
                prepare=reply.prepare_s,
                queue=reply.queue_wait_s,
                forward=reply.forward_s,
                render=finished - answered,
                ingress=finished - started,
            )
        return Response(content, media_type="application/json", headers=headers)

    @app.post("/tokenize", openapi_extra=embeddings_openapi(TokenizeRequest))
    async def tokenize(self, request: Request) -> JSONResponse:
        """vLLM's /tokenize: the token ids of one input under the model's prompt rules (what
        /v1/embeddings would embed, and count in `usage`), for sizing chunks with the server's
        own tokenizer. Over-long inputs are counted, not refused: `count` > `max_model_len`
        says /v1/embeddings would refuse it without truncation. Same key, limits and media
        rules as /v1/embeddings; no forward pass."""
        chat: ChatItem | None = None
        try:
            self._authorize(request)
            body = await read_body(request, self.config.limits.max_request_bytes)
            parsed = parse_request(body, TokenizeRequest)
            name, model = self._route(parsed.model, "embed")
            chat = request_chat_form(parsed, parsed.prompt, input_name="prompt")
            raw = [chat.item] if chat is not None else [parsed.prompt]
            items, _ = await self._items(raw, parsed.instruction, name, model)
            reply = await model.tokenize(EmbedJob(tuple(items), parsed.instruction, None, False))
            if isinstance(reply, EmbedFailure):
                raise failure_error(reply)
            assert isinstance(reply, TokenizeReply)
        except ApiError as error:
            if chat is not None:
                raise chat.translate(error) from None
            raise
        return JSONResponse(
            {
                "count": len(reply.input_ids),
                "max_model_len": reply.max_length,
                "tokens": list(reply.input_ids),
            }
        )

    @app.post("/v1/rerank", openapi_extra=embeddings_openapi(RerankRequest))
    @app.post("/v2/rerank", openapi_extra=embeddings_openapi(RerankRequest))
    @app.post("/rerank", openapi_extra=embeddings_openapi(RerankRequest))
    async def create_rerank(self, request: Request) -> Response:
        """Jina's and Cohere's rerank shape, as vLLM serves it (deployments/rerank_schemas.py)."""
        return await self._scores(request, RerankRequest)

    @app.post("/score", openapi_extra=embeddings_openapi(ScoreRequest))
    @app.post("/v1/score", openapi_extra=embeddings_openapi(ScoreRequest))
    async def create_score(self, request: Request) -> Response:
        """vLLM's /score: text_1 against text_2, one score per pair in input order."""
        return await self._scores(request, ScoreRequest)

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> JSONResponse:
        self._authorize(request)
        # Facts of models not loaded yet are left out rather than waited for.
        await probe_ready(
            {
                name: (lambda name=name: self._describe(name, self._models[name]))
                for name in self._models
            },
            self.config.ingress.ready_timeout_s,
        )
        return JSONResponse(models_response(list(self._models), self._descriptions, self._created))

    @app.get("/health")
    async def health(self) -> JSONResponse:
        """Liveness: the ingress answers. Says nothing about the models (see /ready)."""
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready(self) -> JSONResponse:
        """Readiness: every model has a replica with its weights loaded. Open without a key (for
        probes); its model calls are shared and rate-bounded (READY_CACHE_S)."""
        states = await self._model_states()
        if all(states.values()):
            return JSONResponse({"status": "ready", "models": states})
        waiting = sorted(name for name, ok in states.items() if not ok)
        raise ApiError(
            503,
            f"not ready: model(s) {waiting} not loaded yet",
            code="not_ready",
            headers=retry_after(self.config.ingress.retry_after_s),
        )

    # ----------------------------------------------------------------- helpers
    async def _model_states(self) -> dict[str, bool]:
        """Which models answer `describe`: one probe at a time, its answer reused for
        READY_CACHE_S, so a flood of /ready calls costs each model at most one call a second."""
        answer = self._ready_answer
        if answer is not None and time.monotonic() - answer[0] < READY_CACHE_S:
            return answer[1]
        if self._ready_probe is None or self._ready_probe.done():
            self._ready_probe = asyncio.ensure_future(self._probe_models())
        # shield: a caller that goes away must not cancel the probe the others are waiting on.
        return await asyncio.shield(self._ready_probe)

    async def _probe_models(self) -> dict[str, bool]:
        states = await probe_ready(
            {
                name: (lambda name=name: self._describe(name, self._models[name], cached=False))
                for name in self._models
            },
            self.config.ingress.ready_timeout_s,
        )
        self._ready_answer = (time.monotonic(), states)
        return states

    def _authorize(self, request: Request) -> None:
        if not self._auth.is_authorized(request.headers.get("authorization")):
            raise ApiError(
                401,
                "missing or invalid API key; send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def _scores(self, request: Request, schema: type[Any]) -> Response:
        """A rerank or score request, from its body to its answer (deployments/rerank_routes.py
        turns the body into pairs), with the same key, limits, media rules, errors and metrics
        as /v1/embeddings."""
        started = time.perf_counter()
        label = "unknown"
        try:
            self._authorize(request)
            body = await read_body(request, self.config.limits.max_request_bytes)
            parsed = parse_request(body, schema)
            name, model = self._route(parsed.model, "rerank")
            label = name
            form = rerank_form(parsed) if schema is RerankRequest else score_form(parsed)
            truncate = check_truncation(parsed)
            description = await self._describe(name, model)
            job = await load_pairs(
                form, parsed.instruction, truncate, description.family, name,
                self.config.limits, self.config.media, self._fetcher,
            )  # fmt: skip
            reply = await model.rerank(job)
            if isinstance(reply, EmbedFailure):
                raise failure_error(reply)
            assert isinstance(reply, RerankReply)
        except ApiError as error:
            self._metrics.record(label, error.status, error.code, time.perf_counter() - started)
            raise
        except Exception:
            self._metrics.record(label, 500, "internal_error", time.perf_counter() - started)
            raise
        if schema is RerankRequest:
            version = "2" if request.url.path.rstrip("/").endswith("/v2/rerank") else "1"
            content = render_rerank(
                name, reply.scores, form.documents, parsed.top_n, parsed.return_documents,
                reply.total_tokens, version,
            )  # fmt: skip
        else:
            content = render_score(name, reply.scores, reply.total_tokens)
        self._metrics.record(name, 200, None, time.perf_counter() - started)
        self._metrics.record_success(name, len(job.pairs), reply.total_tokens)
        headers = {}
        if self.config.ingress.batch_stats_header:
            headers = {
                BATCH_REQUESTS_HEADER: str(reply.batch_requests),
                BATCH_INPUTS_HEADER: str(reply.batch_inputs),
            }
        return Response(content, media_type="application/json", headers=headers)

    def _route(self, requested: str | None, task: str = "embed") -> tuple[str, ModelCaller]:
        """The served model a request names (or the one model of its `task` when it names
        none); a model of the other task is refused, naming the route it answers."""
        if requested is None:
            fitting = [name for name in self._models if self._tasks.get(name, "embed") == task]
            if len(fitting) == 1:
                return fitting[0], self._models[fitting[0]]
            if not fitting:
                kind = "reranker" if task == "rerank" else "embedding model"
                raise ApiError(
                    400,
                    f"no {kind} is served here; served models: {sorted(self._models)}",
                    code="model_task_mismatch",
                    param="model",
                )
            raise ApiError(
                400,
                f"model is required; served models: {sorted(self._models)}",
                code="model_required",
                param="model",
            )
        model = self._models.get(requested)
        if model is None:
            raise ApiError(
                404,
                f"model {requested[:200]!r} is not served here; served models: {sorted(self._models)}",
                code="model_not_found",
                param="model",
            )
        if self._tasks.get(requested, "embed") != task:
            routes = "/v1/rerank, /v2/rerank or /score" if task == "embed" else "/v1/embeddings"
            kind = "a reranker" if task == "embed" else "an embedding model"
            raise ApiError(
                400,
                f"model {requested!r} is {kind}; send its requests to {routes}",
                code="model_task_mismatch",
                param="model",
            )
        return requested, model

    async def _items(
        self, raw: Any, instruction: str | None, name: str, model: ModelCaller
    ) -> tuple[list[Any], ModelDescription]:
        """A request's input as checked items with their media loaded (under the media policy),
        and the model's description."""
        items = split_input(raw, instruction, self.config.limits)
        description = await self._describe(name, model)
        slots = find_media(items, description.family, name, self.config.media)
        return await load_media(items, slots, self.config.media, self._fetcher), description

    async def _describe(
        self, name: str, model: ModelCaller, cached: bool = True
    ) -> ModelDescription:
        if cached and name in self._descriptions:
            return self._descriptions[name]
        description = await model.describe()
        self._descriptions[name] = description
        return description

    async def __del__(self) -> None:
        """Serve's shutdown hook (it awaits an async `__del__`): close the media fetcher's
        connection pool instead of leaving its sockets to the garbage collector. Serve calls it
        also when `__init__` failed (e.g. a missing model directory), before `_fetcher` exists:
        that start-up error is the one to report, not a second one from here."""
        fetcher = getattr(self, "_fetcher", None)
        if fetcher is not None:
            await fetcher.aclose()

    # ------------------------------------------ colocated model (ingress.colocate)
    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Serve's user_config hook: with `ingress.colocate` this deployment is the model
        deployment, and its user_config is the model's batching."""
        if self._local is not None:
            self._local.reconfigure(user_config)

    def stats(self) -> dict[str, Any]:
        """The colocated model's batching stats (as `EmbeddingModel.stats`)."""
        if self._local is None:
            raise RuntimeError("stats() is the model deployment's; this ingress holds no model")
        return self._local.stats()
