"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Every failure the API answers goes through `ApiError`, so status, type and code stay consistent;
`install_error_handlers` makes FastAPI's own failures (schema validation, unknown routes,
unexpected exceptions) use the same shape. `ApiError` is a `qwen3_embed.errors.Qwen3EmbedError`;
of the core, this module (like everything the ingress imports) uses only that torch-free module:
the ingress replica never loads torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qwen3_embed.errors import Qwen3EmbedError

logger = logging.getLogger("ray.serve")

# status -> OpenAI error type
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class ApiError(Qwen3EmbedError):
    """An HTTP error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        return _ERROR_TYPES.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error"
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _location(loc: Sequence[Any]) -> str:
    # ("body", "input", 3) -> "input[3]"; the leading "body" says nothing to an API client.
    parts = [part for part in loc if part != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


# Pydantic error type -> the code OpenAI's API answers for the same mistake. A body that is not
# JSON at all has no OpenAI code (it answers null); `invalid_json` says what happened.
_VALIDATION_CODES = {
    "extra_forbidden": "unknown_parameter",
    "missing": "missing_required_parameter",
    "literal_error": "invalid_value",
    "enum": "invalid_value",
    "greater_than_equal": "invalid_value",
    "less_than_equal": "invalid_value",
    "json_invalid": "invalid_json",
    "json_type": "invalid_json",
}


def validation_error(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """Pydantic/FastAPI validation errors -> one 400 naming every offending field, coded as
    OpenAI codes the first one (`unknown_parameter`, `missing_required_parameter`,
    `invalid_value`, else `invalid_type`). 400, not FastAPI's 422: OpenAI answers schema errors
    with 400, so clients built on its SDK raise `BadRequestError` for them as for any other bad
    request (a 422 is its `UnprocessableEntityError`, which code catching bad requests misses)."""
    details = [f"{_location(err.get('loc', ()))}: {err.get('msg', 'invalid')}" for err in errors]
    first = _location(errors[0].get("loc", ())) if errors else None
    kind = str(errors[0].get("type", "")) if errors else ""
    code = _VALIDATION_CODES.get(kind, "invalid_type")
    return ApiError(400, "; ".join(details) or "invalid request", code=code, param=first)


async def _api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.to_response()


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error(exc.errors()).to_response()


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, f"http_{exc.status_code}"
    )
    return ApiError(exc.status_code, str(exc.detail), code=code, headers=exc.headers).to_response()


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    # A bug, not bad input: log it with its traceback, answer without internals.
    logger.exception("unexpected error while handling %s %s", request.method, request.url.path)
    return ApiError(500, "internal server error", code="internal_error").to_response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
