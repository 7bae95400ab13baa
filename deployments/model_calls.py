"""How the ingress reaches a model: through a Serve handle (a model deployment of its own), or
in-process (`ingress.colocate`: the ingress replica holds the model itself).

Both callers answer the same way: an `EmbedReply` / `EmbedFailure` / `ModelDescription`, or an
`ApiError` for a call that did not complete (504 past the timeout; 429 / 503 with Retry-After
when the callee's queue is full or the callee is gone), so the routes do not know which one
they hold.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any, Protocol

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from .errors import ApiError
from .protocol import EmbedFailure, EmbedJob, EmbedReply, ModelDescription, TokenizeReply
from .rerank_protocol import RerankJob, RerankReply

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from .model_deployment import ModelServer
    from .rerank_deployment import RerankServer


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(0, math.ceil(seconds)))}


async def call_with_timeout(
    response: Any, timeout_s: float, what: str, retry_after_s: float = 1.0
) -> Any:
    """Await a DeploymentResponse; past `timeout_s` cancel it (downstream too) and answer 504,
    so no request hangs on a stuck replica. Backpressure from the callee's queue becomes 429; a
    callee that cannot answer (not deployed, or its replica died with the request) becomes 503;
    both with Retry-After."""

    async def wait() -> Any:
        return await response

    try:
        return await asyncio.wait_for(wait(), timeout_s)
    except asyncio.CancelledError:
        response.cancel()  # our caller gave up (client gone, outer timeout): free the callee's queue slot
        raise
    except asyncio.TimeoutError:
        response.cancel()
        raise ApiError(504, f"{what} did not answer within {timeout_s}s", code="timeout") from None
    except BackPressureError as error:
        status = error.status_code if error.status_code in (429, 503) else 429
        delay = error.retry_after_s if error.retry_after_s is not None else retry_after_s
        raise ApiError(
            status,
            f"{what} is overloaded (its queue is full); retry after {math.ceil(delay)}s",
            code="queue_full",
            headers=retry_after(delay),
        ) from None
    except DeploymentUnavailableError:
        raise ApiError(
            503,
            f"{what} is unavailable (it failed to deploy)",
            code="model_unavailable",
            headers=retry_after(retry_after_s),
        ) from None
    except RayActorError:
        # The replica holding the request died (crash, OOM kill, lost node) or is unreachable.
        # Serve replaces it; the request is not retried here, so that an input that kills
        # replicas cannot take the next one down too: the client may retry (embedding is
        # idempotent). Without this clause it was a 500.
        raise ApiError(
            503,
            f"{what} stopped while handling the request; retry",
            code="model_unavailable",
            headers=retry_after(retry_after_s),
        ) from None


class ModelCaller(Protocol):
    async def embed(self, job: EmbedJob) -> EmbedReply | EmbedFailure: ...

    async def tokenize(self, job: EmbedJob) -> TokenizeReply | EmbedFailure: ...

    async def describe(self) -> ModelDescription: ...

    async def rerank(self, job: RerankJob) -> RerankReply | EmbedFailure: ...


class HandleCaller:
    """A model deployment of its own, one Ray call away (the default layout)."""

    def __init__(
        self, handle: DeploymentHandle, what: str, timeout_s: float, retry_after_s: float
    ) -> None:
        self.handle = handle
        self._what = what
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s

    async def embed(self, job: EmbedJob) -> EmbedReply | EmbedFailure:
        return await self._call(self.handle.embed.remote(job))

    async def tokenize(self, job: EmbedJob) -> TokenizeReply | EmbedFailure:
        return await self._call(self.handle.tokenize.remote(job))

    async def describe(self) -> ModelDescription:
        return await self._call(self.handle.describe.remote())

    async def rerank(self, job: RerankJob) -> RerankReply | EmbedFailure:
        return await self._call(self.handle.rerank.remote(job))

    async def _call(self, response: Any) -> Any:
        return await call_with_timeout(response, self._timeout_s, self._what, self._retry_after_s)


class LocalCaller:
    """The model in this very replica (`ingress.colocate`): no Ray hop, no pickling. A call
    past the timeout is abandoned with 504, as through a handle."""

    def __init__(self, server: ModelServer | RerankServer, what: str, timeout_s: float) -> None:
        self.server = server
        self._what = what
        self._timeout_s = timeout_s

    async def embed(self, job: EmbedJob) -> EmbedReply | EmbedFailure:
        return await self._within_timeout(self.server.embed(job))

    async def tokenize(self, job: EmbedJob) -> TokenizeReply | EmbedFailure:
        return await self._within_timeout(self.server.tokenize(job))

    async def rerank(self, job: RerankJob) -> RerankReply | EmbedFailure:
        return await self._within_timeout(self.server.rerank(job))  # type: ignore[union-attr]

    async def _within_timeout(self, call: Any) -> Any:
        try:
            return await asyncio.wait_for(call, self._timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(
                504, f"{self._what} did not answer within {self._timeout_s}s", code="timeout"
            ) from None

    async def describe(self) -> ModelDescription:
        return self.server.describe()
