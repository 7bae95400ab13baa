"""`--forward-mode`, `--compile` and the token budget reach the core from both CLIs, and the
batch job hands replicas thousands of text rows so the core's planner shapes the forwards."""

from __future__ import annotations

import pytest

from qwen3_embed.cli import build_parser


def test_batch_job_flags_reach_its_config():
    from pipelines.cli import config_from_args

    argv = ["embed", "in.jsonl", "out", "--model", "m", "--forward-mode", "packed", "--compile"]
    config = config_from_args(build_parser(argv).parse_args(argv))
    assert (config.forward_mode, config.compile, config.max_batch_tokens) == ("packed", True, None)
    argv = [
        "embed",
        "in.jsonl",
        "out",
        "--model",
        "m",
        "--no-compile",
        "--max-batch-tokens",
        "4096",
    ]
    config = config_from_args(build_parser(argv).parse_args(argv))
    assert (config.forward_mode, config.compile, config.max_batch_tokens) == ("auto", False, 4096)


def test_batch_job_refuses_an_unknown_forward_mode():
    from pipelines.config import JobConfig

    with pytest.raises(ValueError, match="forward_mode='ragged' is invalid; valid values are"):
        JobConfig(input="in.jsonl", output="out", model="m", forward_mode="ragged")


def test_serve_flags_reach_the_model_config():
    pytest.importorskip("ray")
    from deployments.cli import config_from_args

    argv = ["serve", "--model", "m", "--forward-mode", "padded", "--compile"]
    (model,) = config_from_args(build_parser(argv).parse_args(argv)).models
    assert (model.forward_mode, model.compile, model.max_batch_tokens) == ("padded", True, None)
    argv = ["serve", "--model", "m"]
    (model,) = config_from_args(build_parser(argv).parse_args(argv)).models
    assert (model.forward_mode, model.compile) == ("auto", False)


def test_text_replicas_get_thousands_of_rows_per_call(tiny_text_model_dir, tmp_path):
    from pipelines import plan_job
    from pipelines.config import JobConfig

    data = tmp_path / "a.jsonl"
    data.write_text('{"text": "x"}\n')
    model = str(tiny_text_model_dir)
    plan = plan_job(JobConfig(input=str(data), output=str(tmp_path / "out"), model=model))
    assert (plan.batch_rows, plan.embed_rows) == (256, 4096)
    explicit = plan_job(
        JobConfig(input=str(data), output=str(tmp_path / "o2"), model=model, batch_rows=64)
    )
    assert (explicit.batch_rows, explicit.embed_rows) == (64, 64)
