"""The job's media fetching (pipelines/media_fetch.py): transient failures retried, others not.

Named `test_pipeline_media_fetch` beside Serve's `deployments/media_fetch.py` tests."""

from __future__ import annotations

import pytest


# ------------------------------------------------------------------------- media fetch
def test_fetch_retries_transient_failures_only():
    import urllib.error

    from pipelines.media_fetch import FetchFailed, is_transient, with_retries

    def http_error(code: int) -> urllib.error.HTTPError:
        return urllib.error.HTTPError("http://x/a.png", code, "status", {}, None)

    for error in (http_error(503), http_error(429), http_error(500), TimeoutError("slow"),
                  ConnectionResetError("reset"), urllib.error.URLError(TimeoutError("t")),
                  urllib.error.URLError(ConnectionRefusedError("refused")), OSError("AWS NETWORK")):  # fmt: skip
        assert is_transient(error), error
    for error in (http_error(404), http_error(403), http_error(400), FileNotFoundError("x"),
                  PermissionError("x"), urllib.error.URLError("unknown url type"), ValueError("bad")):  # fmt: skip
        assert not is_transient(error), error

    sleeps: list[float] = []
    answers = iter([http_error(503), ConnectionResetError("reset"), b"image"])

    def flaky() -> bytes:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert with_retries("u", flaky, attempts=4, backoff_s=1.0, sleep=sleeps.append) == b"image"
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # doubling
    calls = []

    def gone() -> bytes:
        calls.append(1)
        raise http_error(404)

    with pytest.raises(FetchFailed, match="not retried") as info:
        with_retries("u", gone, sleep=sleeps.append)
    assert not info.value.transient and len(calls) == 1

    def down() -> bytes:
        calls.append(1)
        raise TimeoutError("timed out")

    calls.clear()
    with pytest.raises(FetchFailed, match="transient failure on all 3 attempts") as info:
        with_retries("u", down, attempts=3, backoff_s=0.01, sleep=lambda _: None)
    assert info.value.transient and len(calls) == 3
