"""Serve's app config (deployments/config.py): defaults and validation.

Named `test_serve_config` beside the batch job's `pipelines/config.py` tests (pytest needs
unique file names)."""

from __future__ import annotations

import pytest

from deployments.config import MediaPolicy, ModelConfig, ServeAppConfig
from qwen3_embed_layers.config_base import InvalidConfigError


# ------------------------------------------------------------------------------------ config
def test_config_defaults_and_validation():
    config = ServeAppConfig.model_validate({"models": [{"model": "Qwen/Qwen3-Embedding-0.6B"}]})
    assert config.models[0].name == "Qwen/Qwen3-Embedding-0.6B"
    assert config.models[0].batching.max_batch_size == 32
    assert config.media.allow_url_fetch is False and not config.auth.enabled
    with pytest.raises(InvalidConfigError, match="unique"):
        ServeAppConfig.model_validate(
            {"models": [{"model": "a"}, {"model": "b", "served_model_name": "a"}]}
        )
    with pytest.raises(InvalidConfigError, match="url_allowed_hosts"):
        MediaPolicy(allow_url_fetch=True)
    with pytest.raises(InvalidConfigError, match="url_allowed_networks"):
        MediaPolicy(url_allowed_networks=("not-a-cidr",))
    with pytest.raises(InvalidConfigError, match=r"unknown key 'models\[0\]\.max_batch_sise'"):
        ServeAppConfig.model_validate({"models": [{"model": "a", "max_batch_sise": 3}]})
    with pytest.raises(InvalidConfigError, match="autoscale"):
        ModelConfig(model="a", autoscale=(3, 1))
    with pytest.raises(InvalidConfigError, match="models must hold at least 1"):
        ServeAppConfig.model_validate({"models": []})
