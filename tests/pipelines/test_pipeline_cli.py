"""The job as users run it: `qwen3-embed embed` / `python -m pipelines.embed_corpus` in a
subprocess, attached to the session's Ray cluster through RAY_ADDRESS (as `ray job submit`
would), including a driver killed mid-job and rerun."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from killed_driver import wait_for_first_part, wait_until_output_settles

from pipelines import sample_corpus_path
from pipelines.cli import add_arguments, config_from_args
from pipelines.config import JobConfig

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def cluster_env(ray_cluster) -> dict[str, str]:
    address = ray_cluster.get_runtime_context().gcs_address
    return {
        **os.environ,
        "RAY_ADDRESS": address,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def ids_in(folder: Path) -> list[str]:
    ids = (
        pads.dataset(str(folder), format="parquet")
        .to_table(columns=["id"])
        .column("id")
        .to_pylist()
    )
    errors = folder / "_errors"
    if errors.exists():
        ids += (
            pads.dataset(str(errors), format="parquet")
            .to_table(columns=["id"])
            .column("id")
            .to_pylist()
        )
    return ids


def test_cli_on_the_sample_corpus(cluster_env, tiny_text_model_dir, tmp_path):
    sample = Path(sample_corpus_path())
    expected = [json.loads(line)["id"] for line in sample.read_text().splitlines()]
    assert 200 <= len(expected) <= 1000 and len(set(expected)) == len(expected)
    output = tmp_path / "sample-vectors"
    job = tmp_path / "job.yaml"
    # Relative paths (to the command's working directory, which Ray's workers do not share).
    model = os.path.relpath(tiny_text_model_dir, tmp_path)
    job.write_text(
        f"input: {sample}\noutput: sample-vectors\nmodel: {model}\nid_column: id\ndim: 48\nprogress: false\n"
    )
    command = [
        str(BIN / "qwen3-embed"),
        "embed",
        "--config",
        str(job),
        "--dim",
        "32",
        "--batch-rows",
        "64",
    ]
    done = subprocess.run(
        command, env=cluster_env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout
    assert "qwen3-embed embed: complete" in summary and f"{len(expected)} rows" in summary
    assert "check        ok" in summary
    assert_quiet(done.stderr)
    assert "_errors" not in summary  # nothing failed, and there is no _errors/ folder
    assert not (output / "_errors").exists()
    manifest = json.loads((output / "_manifest.json").read_text())
    assert (
        manifest["dim"] == 32 and manifest["config"]["batch_rows"] == 64
    )  # flags win over the file
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_failed"]) == (
        len(expected),
        len(expected),
        0,
    )
    assert sorted(ids_in(output)) == sorted(expected)

    # The same command again: nothing to do, decided before Ray is touched (no cluster join,
    # no replica, no weights), and said so; the manifest records the no-op run.
    started = time.monotonic()
    again = subprocess.run(
        command, env=cluster_env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    elapsed = time.monotonic() - started
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.startswith("qwen3-embed embed: nothing to do (")
    assert f"all {len(expected)} input rows are already in OUTPUT" in again.stdout
    assert "Starting execution" not in again.stderr and again.stderr == "", again.stderr
    rerun = json.loads((output / "_manifest.json").read_text())
    assert rerun["nothing_to_do"] and rerun["run_id"] != manifest["run_id"]
    assert rerun["done_by_run"]["run_id"] == manifest["run_id"]
    assert rerun["this_run"]["rows_skipped"] == len(expected) and rerun["consistent"]
    assert set(rerun["phases"]) == {"imports", "plan"}
    print("no-op rerun:", {"seconds": round(elapsed, 1), "first run": manifest["wall_seconds"]})

    refused = subprocess.run(
        [
            str(BIN / "qwen3-embed"),
            "embed",
            "--config",
            str(job),
        ],  # dim 48 now: another job's output
        env=cluster_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2
    assert "already holds embeddings from a different job: dim 32 (this job: 48)" in refused.stderr


def assert_quiet(stderr: str) -> None:
    """A successful run prints no error-level line (Ray's C++ `E` lines, Python's ERROR) and no
    deprecation warning; Ray's benign one is filtered by the CLI (pipelines.stderr_filter)."""
    for line in stderr.splitlines():
        assert not re.match(r"^\[[^\]]* E \d+ \d+\]", line), line
        assert "core_worker.cc" not in line and "ERROR" not in line, line
        assert "Deprecat" not in line and "Traceback" not in line, line
        assert "Progress bars disabled" not in line, line  # the user asked for none
        assert "Loading weights" not in line, line  # a replica's progress bar


def test_killed_driver_then_rerun_gives_every_id_once(cluster_env, tiny_text_model_dir, tmp_path):
    corpus = tmp_path / "big.jsonl"
    with open(corpus, "w") as handle:
        for n in range(2000):
            handle.write(
                json.dumps({"text": f"document {n}: " + "words in a row " * (n % 11 + 1)}) + "\n"
            )
        handle.write(json.dumps({"text": ""}) + "\n")  # one error row too
    output = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "pipelines.embed_corpus",
        str(corpus),
        str(output),
        "--model",
        str(tiny_text_model_dir),
        "--rows-per-file",
        "40",
        "--batch-rows",
        "20",
        "--no-progress",
    ]
    driver = subprocess.Popen(
        command, env=cluster_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_first_part(driver, output, timeout_s=240)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["status"] == "running", "the job finished before it could be interrupted"
    wait_until_output_settles(output)
    written_before = len(ids_in(output))
    assert 0 < written_before < 2001

    rerun = subprocess.run(command, env=cluster_env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ids = ids_in(output)
    assert len(ids) == len(set(ids)) == 2001
    assert set(ids) == {f"big.jsonl:{n}" for n in range(2001)}
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["consistent"]
    # The rerun skipped exactly what the killed run had committed and embedded only the rest:
    # nothing written was embedded twice (a rewritten file would not show as a duplicate id).
    run = manifest["this_run"]
    print("driver kill:", {"written_before": written_before, **run})  # figures (pytest -s)
    assert run["rows_skipped"] == written_before
    assert run["rows_embedded"] + run["rows_failed"] == 2001 - written_before
    assert (manifest["rows_embedded"], manifest["rows_failed"]) == (2000, 1)


def test_refusals_need_no_cluster(tiny_text_model_dir, tmp_path):
    """An id column missing from the input, an OUTPUT that cannot be written, and an OUTPUT a
    live run is writing: exit code 2 and one line on stderr, before Ray starts. RAY_ADDRESS
    points at a port nobody listens on, so a job that tried to join a cluster would fail
    otherwise (and slowly)."""
    from pipelines import JobConfig, plan_job
    from pipelines.owner import writer_record

    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1", "HF_HUB_OFFLINE": "1"}
    corpus = tmp_path / "in.jsonl"
    corpus.write_text(json.dumps({"doc": "a", "text": "some text"}) + "\n")
    (tmp_path / "a-file").write_text("not a folder")
    model = str(tiny_text_model_dir)

    def refused(output: Path, *flags: str) -> str:
        command = [str(BIN / "qwen3-embed"), "embed", str(corpus), str(output), "--model", model]
        done = subprocess.run(
            [*command, *flags], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
        assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("qwen3-embed embed: error: "), done.stderr
        return done.stderr

    assert "in.jsonl has no id column 'id_x'" in refused(tmp_path / "o1", "--id-column", "id_x")
    assert "is not writable" in refused(tmp_path / "a-file" / "out")

    # A live run's claim: this test's own process is the "driver" that still runs.
    output = tmp_path / "busy"
    output.mkdir()
    plan = plan_job(JobConfig(input=str(corpus), output=str(output), model=model))
    claim = {"status": "running", "run_id": "r1", "identity": plan.identity}
    (output / "_manifest.json").write_text(json.dumps({**claim, "writer": writer_record()}))
    with pytest.raises(ValueError) as busy:  # the CLI's path for any refusal (see above)
        plan_job(JobConfig(input=str(corpus), output=str(output), model=model))
    assert "is in use: run r1" in str(busy.value)
    assert f"pid {os.getpid()} on this host" in str(busy.value)
    # The same claim from a driver that is gone (a killed run) is taken over: no refusal.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    writer = {**writer_record(), "pid": gone.pid, "pid_started": None}
    (output / "_manifest.json").write_text(json.dumps({**claim, "writer": writer}))
    assert plan_job(JobConfig(input=str(corpus), output=str(output), model=model)).previous


def test_progress_not_on_a_terminal_is_the_jobs_own_line(
    cluster_env, tiny_text_model_dir, tmp_path
):
    """Output to a file (as in CI or under `ray job submit`): the job's progress lines (rows,
    rows/s, ETA, errors), none of Ray Data's multi-line logged blocks."""
    corpus = tmp_path / "c.jsonl"
    lines = [json.dumps({"text": f"document {n} " + "word " * (n % 7)}) for n in range(1500)]
    corpus.write_text("\n".join([*lines, json.dumps({"text": ""})]) + "\n")
    log = tmp_path / "job.log"
    command = [
        str(BIN / "qwen3-embed"),
        "embed",
        str(corpus),
        str(tmp_path / "out"),
        "--model",
        str(tiny_text_model_dir),
        "--batch-rows",
        "16",
        "--progress-interval",
        "0.2",
    ]
    with open(log, "w") as handle:
        done = subprocess.run(
            command, env=cluster_env, stdout=handle, stderr=subprocess.STDOUT, timeout=300
        )
    output = log.read_text()
    assert done.returncode == 0, output[-3000:]
    progress = re.findall(
        r"^qwen3-embed embed: ([\d,]+) of ~1,501 rows \(\d+%\), [\d,]+ rows/s, "
        r"(?:ETA \S+, )?(\d+) errors?$",
        output,
        re.MULTILINE,
    )
    assert progress, output[-3000:]
    assert all(int(rows.replace(",", "")) <= 1501 for rows, _ in progress)
    assert "Running Dataset" not in output and "Progress bars disabled" not in output


def parse(argv: list[str]) -> JobConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_yaml_then_flags(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        "input: [a.jsonl, b.jsonl]\noutput: out\nmodel: some/model\ndim: 64\nnum_replicas: 2\n"
        "storage_options: {endpoint_override: 'http://x:1', region: us-east-1}\n"
    )
    config = parse(
        [
            "--config",
            str(job),
            "--dim",
            "32",
            "--no-truncate",
            "--storage-option",
            "region=eu-west-1",
            "--storage-option",
            "anonymous=true",
        ]
    )
    assert (
        config.input == ("a.jsonl", "b.jsonl")
        and config.output == "out"
        and config.model == "some/model"
    )
    assert config.dim == 32 and config.num_replicas == 2 and config.truncate is False
    assert config.storage_options_dict == {
        "endpoint_override": "http://x:1",
        "region": "eu-west-1",
        "anonymous": True,
    }

    config = parse(["--config", str(job), "c.parquet", "d/", "new-out"])
    assert config.input == ("c.parquet", "d/") and config.output == "new-out"

    job.write_text("input: a\noutput: o\nmodel: m\nbatch_token: 5\n")
    with pytest.raises(
        ValueError,
        match=r"unknown job config key\(s\) \['batch_token'\]; valid keys are: .*batch_tokens",
    ):
        parse(["--config", str(job)])
    with pytest.raises(ValueError, match="missing model"):
        parse(["a.jsonl", "out"])
    with pytest.raises(ValueError, match="INPUT... and OUTPUT"):
        parse(["only-one", "--model", "m"])


def test_cli_module_imports_neither_ray_nor_torch():
    code = (
        "import sys, pipelines, pipelines.cli, pipelines.config; pipelines.JobConfig; "
        "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
