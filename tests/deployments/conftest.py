"""Fixtures of the serving tests (tests/deployments); the helpers are in tests/serve_support.py,
the model checkpoints and the session's Ray cluster in tests/conftest.py."""

from __future__ import annotations

import pytest
from serve_support import ConnectionRecorder


@pytest.fixture(scope="module")
def recorder():
    """A loopback listener that counts connections: what SSRF checks must never reach."""
    rec = ConnectionRecorder("127.0.0.1")
    yield rec
    rec.close()
