"""`qwen3-embed serve`'s flags are generated from the config fields (`deployments.cli.FieldFlag`),
as the batch job's are: no default is restated by hand, the server's own flags (`ServerConfig`)
are the ones that hold beside --app-config, and a refused value reads the same from the flags, a
YAML app config or keyword arguments (`InvalidConfigError`, every refused field named)."""

from __future__ import annotations

import argparse

import pytest
import yaml

from deployments.cli import FIELD_FLAGS, config_from_args, run, server_config_from_args
from deployments.config import (
    AuthConfig,
    BatchingConfig,
    MediaPolicy,
    ModelConfig,
    ServeAppConfig,
    ServerConfig,
)
from qwen3_embed.cli import build_parser
from qwen3_embed_layers.config_base import InvalidConfigError


def _parse(*argv: str) -> argparse.Namespace:
    argv = ("serve", *argv)
    return build_parser(list(argv)).parse_args(list(argv))


def _serve_parser() -> argparse.ArgumentParser:
    return build_parser(["serve"])._subparsers._group_actions[0].choices["serve"]


def _holder(config: ServeAppConfig, server: ServerConfig, cls: type) -> object:
    """Where a field of `cls` lands in the built configs (the first model for model fields)."""
    return {
        ServerConfig: server,
        ModelConfig: config.models[0],
        BatchingConfig: config.models[0].batching,
        AuthConfig: config.auth,
        MediaPolicy: config.media,
    }[cls]


def test_no_serve_flag_restates_a_default():
    """Every flag is None (or an empty list / off) unless given: the config's own default then
    applies, so there is no second copy of it to drift."""
    for action in _serve_parser()._actions:
        if action.dest != "help":
            assert action.default in (None, [], False), (action.option_strings, action.default)


def test_every_generated_flag_defaults_to_its_field_and_says_so():
    args = _parse("--model", "m")
    config, server = config_from_args(args), server_config_from_args(args)
    actions = {action.dest: action for action in _serve_parser()._actions}
    assert len(FIELD_FLAGS) >= 20
    for flag in FIELD_FLAGS:
        field = flag.config.model_fields[flag.field]
        default = field.get_default(call_default_factory=True)
        assert flag.default == default
        assert getattr(_holder(config, server, flag.config), flag.field) == default, flag.field
        help_text = actions[flag.field].help
        if isinstance(default, (bool, tuple)):  # off / none unless given: no default to show
            assert "(default: " not in help_text, (flag.field, help_text)
        elif default is not None:
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert f"(default: {shown}" in help_text, (flag.field, help_text)
        if flag.help is None:
            assert help_text.startswith(field.description), flag.field


def test_every_generated_flag_sets_its_field():
    args = _parse(
        "--model", "m", "--host", "0.0.0.0", "--port", "9001", "--route-prefix", "/api",
        "--request-timeout-s", "30", "--http-proxy", "haproxy", "--api-key-env", "KEYS",
        "--api-key-file", "keys.txt", "--allow-url-fetch", "--url-allowed-host", "a.example",
        "--url-allowed-host", "*.b.example", "--autoscale", "1:3", "--upscale-delay-s", "2",
        "--downscale-delay-s", "4.5", "--max-batch-size", "7", "--batch-wait-ms", "3",
        "--max-ongoing-requests", "9", "--max-queued-requests", "11", "--address", "auto",
        "--num-cpus", "2", "--num-gpus", "0", "--app-name", "embedder",
    )  # fmt: skip
    config, server = config_from_args(args), server_config_from_args(args)
    expected = {
        "host": "0.0.0.0", "port": 9001, "route_prefix": "/api", "request_timeout_s": 30.0,
        "http_proxy": "haproxy", "api_key_env": "KEYS", "api_key_file": "keys.txt",
        "allow_url_fetch": True, "url_allowed_hosts": ("a.example", "*.b.example"),
        "autoscale": (1, 3), "upscale_delay_s": 2.0, "downscale_delay_s": 4.5,
        "max_batch_size": 7, "batch_wait_ms": 3.0, "max_ongoing_requests": 9,
        "max_queued_requests": 11, "address": "auto", "num_cpus": 2, "num_gpus": 0,
        "app_name": "embedder",
    }  # fmt: skip
    assert {flag.field for flag in FIELD_FLAGS} == set(expected)
    for flag in FIELD_FLAGS:
        assert getattr(_holder(config, server, flag.config), flag.field) == expected[flag.field]
    # The ingress's call timeout stays under the proxy's.
    assert config.ingress.model_call_timeout_s == 25.0


def test_server_flags_hold_beside_app_config_and_app_flags_are_refused(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump({"models": [{"model": "m", "served_model_name": "n"}]}))
    server_flags = (
        "--host", "0.0.0.0", "--port", "9", "--route-prefix", "/x", "--request-timeout-s", "9",
        "--http-proxy", "haproxy", "--address", "auto", "--num-cpus", "1", "--num-gpus", "0",
        "--app-name", "a",
    )  # fmt: skip
    args = _parse("--app-config", str(path), *server_flags)
    assert config_from_args(args).models[0].name == "n"
    assert server_config_from_args(args).port == 9
    for flag, value in (
        ("--max-batch-size", "4"), ("--upscale-delay-s", "1"), ("--api-key-env", "K"),
        ("--url-allowed-host", "h"), ("--allow-url-fetch", None), ("--autoscale", "1:2"),
        ("--max-queued-requests", "3"), ("--max-batch-tokens", "64"), ("--split-ingress", None),
        ("--served-model-name", "x"), ("--calibration", "c.json"),
    ):  # fmt: skip
        argv = ("--app-config", str(path), flag, *([value] if value else []))
        with pytest.raises(ValueError, match=f"; {flag} would be ignored"):
            config_from_args(_parse(*argv))


REFUSED = (
    "models[0].max_batch_tokens must be an integer >= 1, got 0; "
    "models[0].upscale_delay_s must be a number >= 0, got -1.0; "
    "models[0].batching.max_batch_size must be an integer >= 1, got 0"
)


def test_a_refused_value_reads_the_same_from_flags_yaml_and_keywords(tmp_path):
    flags = ("--max-batch-tokens", "0", "--upscale-delay-s", "-1", "--max-batch-size", "0")
    with pytest.raises(InvalidConfigError) as from_flags:
        config_from_args(_parse("--model", "m", *flags))
    path = tmp_path / "app.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "model": "m",
                        "max_batch_tokens": 0,
                        "upscale_delay_s": -1.0,
                        "batching": {"max_batch_size": 0},
                    }
                ]
            }
        )
    )
    with pytest.raises(InvalidConfigError) as from_yaml:
        config_from_args(_parse("--app-config", str(path)))
    assert str(from_flags.value) == str(from_yaml.value) == f"invalid serve app config: {REFUSED}"
    # Keyword arguments: the same rules, named from the model config itself.
    with pytest.raises(InvalidConfigError) as from_keywords:
        ModelConfig(
            model="m", max_batch_tokens=0, upscale_delay_s=-1.0, batching={"max_batch_size": 0}
        )
    assert str(from_keywords.value) == "invalid serve model config: " + REFUSED.replace(
        "models[0].", ""
    )


def test_the_command_refuses_a_bad_value_in_one_line_before_starting_ray(capsys):
    assert (
        run(_parse("--model", "m", "--max-batch-tokens", "0", "--max-ongoing-requests", "0")) == 2
    )
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "qwen3-embed serve: invalid serve app config: models[0].max_batch_tokens must be an "
        "integer >= 1, got 0; models[0].max_ongoing_requests must be an integer >= 1, got 0"
    )


def test_the_app_config_refuses_in_the_common_style():
    """What `ServeAppConfig` and its sections refuse, and how they say it (these were pydantic's
    multi-line ValidationErrors)."""
    cases = [
        (
            lambda: ServeAppConfig.model_validate(
                {"models": [{"model": "a"}, {"model": "b", "served_model_name": "a"}]}
            ),
            "invalid serve app config: served model names must be unique; duplicated: ['a']",
        ),
        (
            lambda: MediaPolicy(allow_url_fetch=True),
            "invalid serve media config: allow_url_fetch needs url_allowed_hosts",
        ),
        (
            lambda: MediaPolicy(url_allowed_networks=("not-a-cidr",)),
            "invalid serve media config: url_allowed_networks: 'not-a-cidr' does not appear",
        ),
        (
            lambda: ServeAppConfig.model_validate(
                {"models": [{"model": "a", "max_batch_sise": 3}]}
            ),
            "invalid serve app config: unknown key 'models[0].max_batch_sise'",
        ),
        (
            lambda: ModelConfig(model="a", autoscale=(3, 1)),
            "invalid serve model config: autoscale must be (min, max) with 0 <= min <= max",
        ),
        (
            lambda: ServeAppConfig.model_validate({"models": []}),
            "invalid serve app config: models must hold at least 1 item(s)",
        ),
        (
            lambda: ModelConfig(model="m", downscale_delay_s=-1),
            "invalid serve model config: downscale_delay_s must be a number >= 0, got -1",
        ),
        (
            lambda: ServerConfig(http_proxy="nginx"),
            "invalid serve command config: http_proxy='nginx' is invalid; valid values are: "
            "auto, ray, haproxy",
        ),
    ]
    for build, message in cases:
        with pytest.raises(InvalidConfigError) as error:
            build()
        assert str(error.value).startswith(message), str(error.value)
        assert "\n" not in str(error.value)
