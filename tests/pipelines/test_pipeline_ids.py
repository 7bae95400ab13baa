"""Which ids a job uses: `--id-column` as given, else `id` when the input has such a column,
else derived (`file:row`); a resumed OUTPUT keeps its ids; the summary and manifest say which.
And `qwen3-embed --version`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import tomllib

from pipelines import JobConfig, plan_job, run_embedding_job

REPO = Path(__file__).resolve().parents[2]


def plan_ids(model: Path, source: Path, out: Path, **fields) -> tuple[str | None, str]:
    plan = plan_job(JobConfig(input=str(source), output=str(out), model=str(model), **fields))
    return plan.id_column, plan.id_source


def test_id_column_defaults_to_id_when_the_input_has_one(tiny_text_model_dir, tmp_path):
    model, out = tiny_text_model_dir, tmp_path / "out"
    (tmp_path / "with.jsonl").write_text('\n{"id": "a", "text": "one"}\n')  # a blank line first
    (tmp_path / "without.jsonl").write_text('{"key": "a", "text": "one"}\n')
    (tmp_path / "with.csv").write_text("text,id\none,a\n")
    pq.write_table(pa.table({"id": ["a"], "text": ["one"]}), tmp_path / "with.parquet")
    pq.write_table(pa.table({"doc": ["a"], "text": ["one"]}), tmp_path / "without.parquet")
    (tmp_path / "lines.txt").write_text("one\n")
    for name, expected in [
        ("with.jsonl", ("id", "default")),
        ("with.csv", ("id", "default")),
        ("with.parquet", ("id", "default")),
        ("without.jsonl", (None, "derived")),
        ("without.parquet", (None, "derived")),
        ("lines.txt", (None, "derived")),
    ]:
        assert plan_ids(model, tmp_path / name, out) == expected, name
    assert plan_ids(model, tmp_path / "without.jsonl", out, id_column="key") == ("key", "given")
    with pytest.raises(ValueError, match="with.jsonl has no id column 'key'"):
        plan_ids(model, tmp_path / "with.jsonl", out, id_column="key")
    assert plan_ids(model, tmp_path / "with.jsonl", out, derived_ids=True) == (None, "derived")
    with pytest.raises(ValueError, match="id_column or derived_ids, not both"):
        JobConfig(input="x", output="y", model="m", id_column="id", derived_ids=True)


def test_a_resumed_output_keeps_its_ids(tiny_text_model_dir, tmp_path):
    from pipelines.discovery import discover
    from pipelines.job import _choose_ids

    (tmp_path / "docs.jsonl").write_text('{"id": "a", "text": "one"}\n')
    config = JobConfig(input=str(tmp_path / "docs.jsonl"), output="o", model="m")
    inputs = discover(config.input)
    assert _choose_ids(config, inputs, None) == ("id", "default")
    # An OUTPUT started before the default existed, without --id-column: derived ids, kept.
    assert _choose_ids(config, inputs, {"config": {"id_column": None}}) == (None, "kept")
    assert _choose_ids(config, inputs, {"ids": {"column": "id", "source": "default"}}) == (
        "id",
        "kept",
    )


def test_job_uses_the_id_column_by_default_and_says_so(ray_cluster, tiny_text_model_dir, tmp_path):
    rows = [{"id": f"doc-{n}", "text": f"document number {n}"} for n in range(5)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "out"
    result = run_embedding_job(
        JobConfig(
            input=str(tmp_path / "docs.jsonl"),
            output=str(output),
            model=str(tiny_text_model_dir),
            progress=False,
        )
    )
    ids = pads.dataset(str(output), format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == [row["id"] for row in rows] and result.consistent
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["ids"] == {"column": "id", "source": "default"}
    assert "ids          column 'id' (the default: the input has an `id` column)" in (
        result.summary()
    )


def test_cli_flags_and_version():
    import argparse

    from pipelines.cli import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["in.jsonl", "out/", "--model", "m", "--derived-ids"])
    assert config_from_args(args).derived_ids is True
    assert (
        config_from_args(parser.parse_args(["in.jsonl", "out/", "--model", "m"])).id_column is None
    )

    done = subprocess.run(
        [sys.executable, "-m", "qwen3_embed.cli", "--version"],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert done.returncode == 0 and done.stdout == f"qwen3-embed {version}\n", done.stderr
