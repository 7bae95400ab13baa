"""Image references fetched by the batch job, with bounded retries for transient failures.

A job reads images that live on object stores and web servers, where a timeout, a 5xx or 429
answer, or a reset connection says nothing about the image: the same request a moment later
usually succeeds. Such failures are retried `FETCH_ATTEMPTS` times in all, with exponential
backoff (`BACKOFF_S`, doubling, capped at `MAX_BACKOFF_S`, with jitter so that many workers do
not retry in step); only then does the row become an error, with code `media_unavailable`
(transient: rerunning the job may embed it). A 4xx answer (other than 408 / 429), a missing file
or a refused permission is final at once: code `read_error`, not retried. Decoding is the core's
job afterwards: an undecodable image is final too (`invalid_input`).

Local paths and data URIs are not fetched here (the core reads them, a local read failing is not
transient); http(s) URLs and every other fsspec/pyarrow URL (s3://, gs://, ...) are.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import time
import urllib.error
from collections.abc import Callable, Mapping
from typing import Any

from qwen3_embed.errors import Qwen3EmbedError

logger = logging.getLogger(__name__)

FETCH_ATTEMPTS = 4
BACKOFF_S = 0.5
MAX_BACKOFF_S = 4.0
HTTP_TIMEOUT_S = 30.0
RETRIABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


class FetchFailed(Qwen3EmbedError):
    """A reference could not be fetched. `transient` says whether retrying later may help."""

    code = "media_fetch_failed"

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


def is_transient(error: BaseException) -> bool:
    """Timeouts, 5xx/408/429 answers, resets and other connection-level errors: yes. 4xx
    answers, missing files, refused permissions, malformed URLs: no."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code in RETRIABLE_HTTP
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        return isinstance(reason, BaseException) and is_transient(reason)
    if isinstance(
        error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
    ):
        return False
    if isinstance(error, (TimeoutError, ConnectionError, http.client.HTTPException)):
        return True  # HTTPException: a response cut short (IncompleteRead, BadStatusLine)
    # pyarrow/fsspec report network trouble as plain OSError (and 404s as FileNotFoundError).
    return isinstance(error, OSError) and not isinstance(error, ValueError)


def fetch_http(url: str, max_bytes: int, timeout_s: float = HTTP_TIMEOUT_S) -> bytes:
    """The core's size-limited GET; its network errors stay raw for `with_retries` to classify,
    and an over-large body (an InputError) is final."""
    from qwen3_embed.errors import InputError
    from qwen3_embed.vl.media import MediaOptions, fetch_http_bytes

    try:
        return fetch_http_bytes(url, MediaOptions(max_bytes=max_bytes, timeout_s=timeout_s))
    except InputError as error:
        raise FetchFailed(error.reason, transient=False) from None


def with_retries(
    what: str,
    fetch: Callable[[], bytes],
    attempts: int = FETCH_ATTEMPTS,
    backoff_s: float = BACKOFF_S,
    sleep: Callable[[float], None] = time.sleep,
) -> bytes:
    """`fetch()`, retried on transient errors; raises FetchFailed saying which kind it was."""
    for attempt in range(1, attempts + 1):
        try:
            return fetch()
        except FetchFailed:
            raise
        except Exception as error:  # noqa: BLE001 - classified just below
            detail = f"{type(error).__name__}: {error}"
            if not is_transient(error):
                raise FetchFailed(f"cannot fetch {what} ({detail}; not retried)", False) from None
            if attempt == attempts:
                raise FetchFailed(
                    f"cannot fetch {what}: transient failure on all {attempts} attempts "
                    f"(last: {detail}); rerunning the job may embed this row",
                    True,
                ) from None
            delay = min(MAX_BACKOFF_S, backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            logger.warning(
                "fetch %s failed (%s), attempt %d of %d", what, detail, attempt, attempts
            )
            sleep(delay)
    raise AssertionError("unreachable")


def fetch_reference(
    reference: str, storage_options: Mapping[str, Any], max_bytes: int
) -> str | bytes:
    """Remote references -> bytes (with retries); data URIs unchanged; local paths unchanged
    once they are known to be readable files (the core streams them). A local file that is
    missing or unreadable fails here as final (`read_error`), as a 404 or a missing object does;
    one that exists but cannot be decoded is the core's `invalid_input`, whatever the media."""
    scheme = reference.partition("://")[0].lower() if "://" in reference else ""
    if scheme == "" and reference[:5].lower() == "data:":
        return reference
    if scheme in ("", "file"):
        path = reference[len("file://") :] if scheme == "file" else reference
        _check_local_file(path)
        return path
    shown = reference if len(reference) <= 160 else "..." + reference[-157:]
    if scheme in ("http", "https"):
        return with_retries(repr(shown), lambda: fetch_http(reference, max_bytes))
    from .storage import read_bytes, resolve

    return with_retries(repr(shown), lambda: read_bytes(resolve(reference, dict(storage_options))))


def _check_local_file(path: str) -> None:
    shown = path if len(path) <= 160 else "..." + path[-157:]
    if not os.path.isfile(path):
        raise FetchFailed(f"no such file: {shown!r}", transient=False)
    if not os.access(path, os.R_OK):
        raise FetchFailed(f"permission denied: {shown!r}", transient=False)
