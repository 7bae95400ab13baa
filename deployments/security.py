"""Bearer API keys: loaded from an environment variable or a file, compared in constant time.

Keys are read inside the ingress replica (never passed as deployment arguments, so they do not
appear in the Serve config, the dashboard or a command line), kept only as SHA-256 digests, and
never logged. A configured source that yields no key is an error at start-up, not an open API.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from .config import AuthConfig


def _digest(key: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison's time independent of the key length.
    return hashlib.sha256(key.encode("utf-8")).digest()


def read_api_keys(auth: AuthConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """The keys `auth` names; raises ValueError (naming the source, never a key) when a configured
    source is missing or empty."""
    environ = os.environ if environ is None else environ
    keys: list[str] = []
    if auth.api_key_env:
        value = environ.get(auth.api_key_env, "")
        found = [key.strip() for key in value.split(",") if key.strip()]
        if not found:
            raise ValueError(
                f"api_key_env={auth.api_key_env!r}: the variable is unset or empty in this process; "
                "set it on every node that runs the ingress (or use api_key_file)"
            )
        keys += found
    if auth.api_key_file:
        path = Path(auth.api_key_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise ValueError(
                f"api_key_file={str(path)!r} cannot be read: {error.strerror}"
            ) from None
        found = [
            line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")
        ]
        if not found:
            raise ValueError(
                f"api_key_file={str(path)!r} holds no key (one key per line, '#' for comments)"
            )
        keys += found
    return keys


class ApiKeyChecker:
    """Checks `Authorization: Bearer <key>` headers against the configured keys."""

    def __init__(self, keys: Iterable[str]):
        self._digests = tuple(_digest(key) for key in keys)

    @classmethod
    def from_config(
        cls, auth: AuthConfig, environ: Mapping[str, str] | None = None
    ) -> ApiKeyChecker:
        return cls(read_api_keys(auth, environ) if auth.enabled else [])

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def is_authorized(self, authorization: str | None) -> bool:
        if not self.enabled:
            return True
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        candidate = _digest(token.strip())
        # Compare against every key without stopping early, so timing says nothing about which
        # (or whether a) key matched.
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(candidate, digest)
        return matched
