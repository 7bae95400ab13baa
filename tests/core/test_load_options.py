"""One definition per knob (issue 17 item 1): `LoadOptions` / `ReplicaOptions` in the core; the
job config, the Dataset stage config, Serve's model config and both CLIs take their names,
defaults, rules and help from them; renamed knobs keep their old names for one release."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from qwen3_embed.options import (
    DEPRECATED_NAMES,
    InvalidOptionsError,
    LoadOptions,
    ReplicaOptions,
    rules,
)
from qwen3_embed_layers.config_base import InvalidConfigError

KNOBS = {**rules(LoadOptions), **rules(ReplicaOptions)}


def _configs():
    pytest.importorskip("ray")
    from deployments.config import ModelConfig
    from pipelines.config import JobConfig
    from pipelines.dataset_stage import EmbedStageConfig

    return JobConfig, EmbedStageConfig, ModelConfig


def test_load_options_validate_every_knob_at_once():
    with pytest.raises(InvalidOptionsError) as error:
        LoadOptions(
            model=" ", dtype="fp8", max_length=0, max_batch_tokens=True, forward_mode="ragged"
        )
    message = str(error.value)
    for expected in (
        "model must be a non-empty string",
        "dtype='fp8' is invalid; valid values are: auto, float32, bfloat16, float16",
        "max_length must be an integer >= 1, got 0",
        "max_batch_tokens must be an integer >= 1, got True",
        "forward_mode='ragged' is invalid; valid values are: auto, padded, packed",
    ):
        assert expected in message
    assert error.value.code == "invalid_options"
    with pytest.raises(InvalidOptionsError, match="num_replicas must be an integer >= 1"):
        ReplicaOptions(num_replicas=0)


@pytest.mark.parametrize("loader", ["Embedder", "Reranker", "Preparer", "RerankPreparer"])
@pytest.mark.parametrize("knob", ["max_length", "max_batch_tokens"])
def test_public_loaders_check_each_knob_by_its_rule_before_any_work(loader, knob, tmp_path):
    """max_length and max_batch_tokens are checked once, where they enter (every public loader
    builds `LoadOptions`), before the model is even looked for; inside, the core trusts them."""
    import qwen3_embed

    if knob == "max_batch_tokens" and loader.endswith("Preparer"):
        pytest.skip("a preparer has no forward passes")
    load = getattr(qwen3_embed, loader).from_pretrained
    missing = tmp_path / "no-such-model"
    with pytest.raises(InvalidOptionsError, match=f"{knob} must be an integer >= 1, got 0"):
        load(missing, **{knob: 0})


@pytest.mark.parametrize("index", [0, 1, 2], ids=["job", "dataset-stage", "serve-model"])
def test_every_config_holds_each_knob_under_one_name(index):
    config_class = _configs()[index]
    for name, (rule, default) in KNOBS.items():
        field = config_class.model_fields[name]  # KeyError: a knob spelt otherwise here
        expected = None if default is dataclasses.MISSING else default
        assert (None if field.is_required() else field.default) == expected, name
        assert field.description == rule.help, name
    for old in DEPRECATED_NAMES:
        assert old not in config_class.model_fields


@pytest.mark.parametrize("index", [0, 1, 2], ids=["job", "dataset-stage", "serve-model"])
def test_every_config_refuses_what_the_core_refuses(index):
    config_class = _configs()[index]
    required = {"input": "a.jsonl", "output": "out"} if index == 0 else {}
    for name, value in (
        ("dtype", "fp8"),  # Serve's dtype used to fail only inside every replica
        ("forward_mode", "ragged"),
        ("max_batch_tokens", 0),
        ("max_length", "512"),
        ("compile", 1),
        ("num_replicas", 0),
        ("gpus_per_replica", -1),
    ):
        with pytest.raises(InvalidConfigError, match=name):
            config_class(model="m", **required, **{name: value})


def test_the_configs_hand_their_load_options_to_the_core():
    job_config, stage_config, model_config = _configs()
    values = {"model": "m", "dtype": "float32", "max_batch_tokens": 4096, "compile": True}
    expected = LoadOptions(**values)
    assert job_config(input="a", output="o", **values).load_options() == expected
    assert stage_config(**values).load_options() == expected
    assert model_config(**values).load_options() == expected


def test_old_knob_names_still_work_with_a_warning(tmp_path):
    job_config, stage_config, _ = _configs()
    with pytest.warns(FutureWarning, match="'batch_tokens' is deprecated.*'max_batch_tokens'"):
        config = job_config(input="a", output="o", model="m", batch_tokens=4096)
    assert config.max_batch_tokens == 4096
    with pytest.warns(FutureWarning, match="'replicas' is deprecated.*'num_replicas'"):
        assert stage_config(model="m", replicas=3).num_replicas == 3
    with pytest.raises(InvalidOptionsError, match="give num_replicas, not both"):
        job_config(input="a", output="o", model="m", replicas=2, num_replicas=3)
    path = tmp_path / "job.yaml"
    path.write_text("input: a\noutput: o\nmodel: m\nreplicas: 2\nbatch_tokens: 512\n")
    with pytest.warns(FutureWarning):
        config = job_config.from_yaml(path)
    assert (config.num_replicas, config.max_batch_tokens) == (2, 512)


def _parsers():
    pytest.importorskip("ray")
    from deployments.cli import add_parser as add_serve_parser
    from pipelines.cli import add_parser as add_embed_parser

    commands = argparse.ArgumentParser(prog="qwen3-embed").add_subparsers()
    return add_embed_parser(commands), add_serve_parser(commands)


def test_both_clis_take_flags_and_help_from_the_knobs():
    for parser in _parsers():
        actions = {
            action.dest: action for action in parser._actions if action.help != argparse.SUPPRESS
        }
        for name, (rule, _) in KNOBS.items():
            if name == "model" and parser.prog.endswith("serve"):
                continue  # serve's --model is repeatable: one per served model
            action = actions[name]
            assert f"--{name.replace('_', '-')}" in action.option_strings, (parser.prog, name)
            assert action.help.startswith(rule.help), (parser.prog, name)
            if rule.choices:
                assert tuple(action.choices) == rule.choices


def test_old_flag_names_still_work_with_a_warning():
    from deployments.cli import config_from_args as serve_config
    from pipelines.cli import config_from_args as job_config

    job, serve = _parsers()
    with pytest.warns(FutureWarning, match="--batch-tokens is deprecated.*--max-batch-tokens"):
        args = job.parse_args(["in.jsonl", "out", "--model", "m", "--batch-tokens", "4096"])
    assert job_config(args).max_batch_tokens == 4096
    with pytest.warns(FutureWarning, match="--replicas is deprecated.*--num-replicas"):
        args = serve.parse_args(["--model", "m", "--replicas", "2"])
    (model,) = serve_config(args).models
    assert model.num_replicas == 2
    assert "--batch-tokens" not in job.format_help() and "--replicas " not in serve.format_help()


def test_from_options_loads_what_from_pretrained_loads(tiny_text_model_dir, tiny_text_embedder):
    from qwen3_embed import Embedder

    loaded = Embedder.from_options(
        LoadOptions(model=str(tiny_text_model_dir), device="cpu", max_batch_tokens=777)
    )
    assert loaded.max_batch_tokens == 777 and loaded.backend.dtype == torch.float32
    texts = ["one short text", "and another, somewhat longer, text"]
    assert torch.equal(loaded.embed(texts).embeddings, tiny_text_embedder.embed(texts).embeddings)
    # The Python API keeps its short dtype spellings and torch dtypes.
    assert Embedder.from_pretrained(
        tiny_text_model_dir, device="cpu", dtype="fp32"
    ).backend.dtype == (torch.float32)


def test_the_core_loads_without_pydantic_or_ray():
    """A GPU machine with only the core's dependencies (torch, transformers) imports the core and
    its options; pydantic and Ray belong to the layers."""
    import subprocess
    import sys

    code = (
        "import sys, qwen3_embed, qwen3_embed.options, qwen3_embed.embedder, qwen3_embed.preparer; "
        "print(sorted(m for m in ('pydantic', 'ray') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
