"""One config behaviour for both layers (`qwen3_embed_layers.config_base`): every config of the
batch jobs and of the Serve app is a frozen `ReadableConfig`, and a refused value raises
`InvalidConfigError`, one line naming every refused field by its path, in the core's words."""

from __future__ import annotations

import inspect

import pydantic
import pytest
from pydantic import Field

from qwen3_embed.options import InvalidOptionsError
from qwen3_embed_layers.config_base import FrozenConfig, InvalidConfigError, ReadableConfig


class Inner(ReadableConfig):
    what = "inner config"

    count: int = Field(1, ge=1)
    share: float = Field(0.5, ge=0)


class Outer(ReadableConfig):
    what = "outer config"

    items: tuple[Inner, ...] = Field(..., min_length=1)
    one: Inner = Field(default_factory=Inner)


def _message(build) -> str:
    with pytest.raises(InvalidConfigError) as error:
        build()
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_every_refused_field_is_named_once_in_one_line():
    message = _message(lambda: Inner(count=0, share=-1, colour="red"))
    assert message == (
        "invalid inner config: count must be an integer >= 1, got 0; "
        "share must be a number >= 0, got -1; unknown key 'colour'"
    )


def test_nested_configs_are_named_by_their_path_whichever_way_they_are_built():
    values = {"items": [{"count": 0}, {"share": "x"}], "one": {"count": 2.5}}
    by_mapping = _message(lambda: Outer.model_validate(values))
    by_keywords = _message(lambda: Outer(**values))
    assert (
        by_mapping
        == by_keywords
        == (
            "invalid outer config: items[0].count must be an integer >= 1, got 0; "
            "items[1].share must be a number, got 'x'; one.count must be an integer, got 2.5"
        )
    )
    # An empty list is refused as such; a list whose items were refused is not also "too short".
    assert (
        _message(lambda: Outer(items=[]))
        == "invalid outer config: items must hold at least 1 item(s)"
    )


def test_configs_are_frozen_and_replace_validates():
    inner = Inner(count=2)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        inner.count = 3  # type: ignore[misc]
    assert inner.replace(count=4) == Inner(count=4, share=0.5)
    assert "count must be an integer >= 1" in _message(lambda: inner.replace(count=0))
    assert issubclass(InvalidConfigError, InvalidOptionsError) and issubclass(
        InvalidConfigError, ValueError
    )


def _config_classes() -> list[type]:
    from deployments import config as serve_config
    from pipelines.config import JobConfig
    from pipelines.dataset_stage import EmbedStageConfig
    from pipelines.rerank_config import RerankJobConfig
    from pipelines.rerank_stage import RerankStageConfig

    serve = [
        cls
        for _, cls in inspect.getmembers(serve_config, inspect.isclass)
        if issubclass(cls, pydantic.BaseModel) and cls.__module__ == serve_config.__name__
    ]
    assert len(serve) >= 8, serve  # the app, its sections, the model, the server
    return [JobConfig, RerankJobConfig, EmbedStageConfig, RerankStageConfig, *serve]


def test_every_layer_config_shares_the_base():
    for cls in _config_classes():
        assert issubclass(cls, ReadableConfig), cls
        assert cls.model_config.get("frozen") and cls.model_config.get("extra") == "forbid", cls
        assert cls.what.endswith("config") and cls.what != "config", cls
        # Nested in another config, it is validated as part of it (the path stays in the error).
        assert not cls.__pydantic_custom_init__, cls
    assert not issubclass(FrozenConfig, ReadableConfig)


@pytest.mark.parametrize(
    "build",
    [
        lambda m: m["JobConfig"](input="a", output="o", model="m", max_batch_tokens=0),
        lambda m: m["EmbedStageConfig"](model="m", max_batch_tokens=0),
        lambda m: m["RerankJobConfig"](input="a", output="o", model="m", max_batch_tokens=0),
        lambda m: m["RerankStageConfig"](model="m", max_batch_tokens=0),
        lambda m: m["ModelConfig"](model="m", max_batch_tokens=0),
    ],
    ids=["job", "embed-stage", "rerank-job", "rerank-stage", "serve-model"],
)
def test_the_job_and_serve_refuse_a_knob_in_the_same_words(build):
    classes = {cls.__name__: cls for cls in _config_classes()}
    message = _message(lambda: build(classes))
    assert message.startswith("invalid ") and message.endswith(
        " config: max_batch_tokens must be an integer >= 1, got 0"
    ), message
