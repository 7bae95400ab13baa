"""API keys (deployments/security.py): where keys come from, which headers pass, and key
sources that yield nothing are errors, not open access."""

from __future__ import annotations

import pytest

from deployments.config import AuthConfig
from deployments.security import ApiKeyChecker, read_api_keys


# --------------------------------------------------------------------------------- API keys
def test_api_keys_from_env_and_file(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# comment\nfile-key\n\n")
    auth = AuthConfig(api_key_env="MY_KEYS", api_key_file=str(key_file))
    assert read_api_keys(auth, {"MY_KEYS": "env-a, env-b"}) == ["env-a", "env-b", "file-key"]
    checker = ApiKeyChecker.from_config(auth, {"MY_KEYS": "env-a,env-b"})
    assert checker.enabled
    assert checker.is_authorized("Bearer env-b") and checker.is_authorized("bearer file-key")
    for header in (
        None,
        "",
        "Bearer",
        "Bearer wrong",
        "Basic env-a",
        "env-a",
        "Bearer env-a-suffix",
    ):
        assert not checker.is_authorized(header), header
    assert ApiKeyChecker.from_config(AuthConfig()).is_authorized(None)  # no keys configured: open


def test_api_key_sources_that_yield_nothing_are_errors_not_open_access(tmp_path):
    with pytest.raises(ValueError, match="MISSING_VAR") as info:
        read_api_keys(AuthConfig(api_key_env="MISSING_VAR"), {})
    with pytest.raises(ValueError, match="holds no key"):
        empty = tmp_path / "empty"
        empty.write_text("# nothing\n")
        read_api_keys(AuthConfig(api_key_file=str(empty)), {})
    with pytest.raises(ValueError, match="cannot be read"):
        read_api_keys(AuthConfig(api_key_file=str(tmp_path / "absent")), {})
    assert "secret" not in str(info.value)
