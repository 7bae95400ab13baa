"""The batch job's pieces without a Ray cluster: config, input discovery, readers, resume
bookkeeping, the sink, and the two stages called directly on Arrow tables."""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydantic
import pytest

from pipelines.cli import add_arguments, config_from_args
from pipelines.config import JobConfig
from pipelines.discovery import discover
from pipelines.layout import part_name
from pipelines.readers import ReadSpec, read_file
from pipelines.resume import (
    DoneSet,
    OutputMismatchError,
    check_output,
    id_digests,
    mark_skipped,
    scan_output,
)
from pipelines.rows import ERRORS_SCHEMA, READ_SCHEMA, output_schema
from pipelines.storage import glob_to_regex, resolve, write_bytes_atomically

SPEC = ReadSpec(id_column=None, text_column="text", image_column=None, block_rows=4)


def parse(argv: list[str]) -> JobConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def rows(tables) -> list[dict]:
    return [row for table in tables for row in table.to_pylist()]


# ------------------------------------------------------------------------------ config
def test_config_is_immutable_and_validated():
    config = JobConfig(input="a.jsonl", output="out", model="m")
    assert config.input == ("a.jsonl",) and config.truncate and config.num_replicas == 1
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.dim = 3  # type: ignore[misc]
    with pytest.raises(ValueError) as error:
        JobConfig(
            input=(), output="out", model="m", dim=0, format="xml", num_replicas=0, instruction=" "
        )
    message = str(error.value)
    for expected in (
        "input must name",
        "dim must be an integer >= 1",
        "format='xml' is invalid; valid values are: auto",
        "replicas must be an integer >= 1",
        "instruction must be a non-empty string",
    ):
        assert expected in message


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


def test_manifest_view_masks_secrets():
    config = JobConfig(
        input="a", output="o", model="m", storage_options={"secret_key": "s3cr3t", "region": "r"}
    )
    assert config.to_dict()["storage_options"] == {"region": "r", "secret_key": "***"}


def test_cli_module_imports_neither_ray_nor_torch():
    code = (
        "import sys, pipelines, pipelines.cli, pipelines.config; pipelines.JobConfig; "
        "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ inputs
@pytest.fixture()
def corpus_folder(tmp_path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.jsonl").write_text('{"text": "x"}\n')
    (root / "sub" / "b.csv").write_text("text\nx\n")
    (root / "c.txt.gz").write_bytes(gzip.compress(b"x\ny\n"))
    pq.write_table(pa.table({"text": ["x"]}), root / "d.parquet")
    (root / "_SUCCESS").write_text("")
    (root / ".d.parquet.crc").write_text("")
    (root / "_errors").mkdir()
    (root / "_errors" / "e.jsonl").write_text("{}\n")
    return root


def test_discover_lists_data_files_with_formats_and_relative_paths(corpus_folder):
    found = discover((str(corpus_folder),))
    assert [(f.relpath, f.format) for f in found.files] == [
        ("a.jsonl", "jsonl"),
        ("c.txt.gz", "txt"),
        ("d.parquet", "parquet"),
        ("sub/b.csv", "csv"),
    ]
    assert found.root == str(corpus_folder)
    # A glob keeps the same root as the folder, so ids do not change between the two.
    glob = discover((str(corpus_folder / "**" / "*.csv"),))
    assert [f.relpath for f in glob.files] == ["sub/b.csv"]
    single = discover((str(corpus_folder / "sub" / "b.csv"),))
    assert [f.relpath for f in single.files] == ["b.csv"]
    both = discover((str(corpus_folder / "a.jsonl"), str(corpus_folder / "sub")))
    assert [f.relpath for f in both.files] == ["a.jsonl", "sub/b.csv"]
    same_twice = discover((str(corpus_folder / "a.jsonl"), str(corpus_folder / "*.jsonl")))
    assert len(same_twice.files) == 1


def test_discover_refuses_unknown_and_missing(corpus_folder):
    (corpus_folder / "notes.md").write_text("hi")
    with pytest.raises(
        ValueError, match=r"cannot tell the format of 1 input file\(s\): .*notes.md.*pass --format"
    ):
        discover((str(corpus_folder),))
    assert {f.format for f in discover((str(corpus_folder / "notes.md"),), fmt="txt").files} == {
        "txt"
    }
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover((str(corpus_folder / "nope.jsonl"),))
    with pytest.raises(FileNotFoundError, match="matches no files"):
        discover((str(corpus_folder / "*.xml"),))


def test_glob_to_regex():
    assert glob_to_regex("*.jsonl").match("a.jsonl") and not glob_to_regex("*.jsonl").match(
        "x/a.jsonl"
    )
    assert glob_to_regex("**/*.csv").match("a.csv") and glob_to_regex("**/*.csv").match("x/y/a.csv")
    assert glob_to_regex("part-[0-9].txt").match("part-3.txt") and not glob_to_regex(
        "part-[!0-9].txt"
    ).match("part-3.txt")


# ----------------------------------------------------------------------------- readers
def read(path: Path, spec: ReadSpec = SPEC, fmt: str = "auto") -> list[dict]:
    found = discover((str(path),), fmt)
    return rows(read_file(found.files[0], found.fs, found.prefix, spec))


def test_jsonl_every_line_lands_somewhere(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "good"}),
        "",  # blank: not a record, but row numbers keep counting lines
        "{not json",
        "[1, 2]",
        json.dumps({"id": "b", "text": 7}),
        json.dumps({"id": None, "text": "no id"}),
        json.dumps({"id": 12, "text": None}),
        json.dumps({"id": "c"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    got = read(path, ReadSpec("id", "text", None, block_rows=3))
    assert [(r["id"], r["status"], r["code"]) for r in got] == [
        ("a", "ok", None),
        ("d.jsonl:2", "error", "invalid_row"),
        ("d.jsonl:3", "error", "invalid_row"),
        ("b", "error", "invalid_input"),
        ("d.jsonl:5", "error", "invalid_row"),
        ("12", "ok", None),
        ("c", "ok", None),
    ]
    assert "not valid JSON" in got[1]["error"] and "JSON list, not an object" in got[2]["error"]
    assert got[3]["error"] == "column 'text' must hold strings, got int"
    assert got[4]["error"] == "id column 'id' is empty"
    assert got[5]["text"] is None  # left for the core to reject with its own message

    array = tmp_path / "array.json"
    array.write_text('[{"text": "a"}]\n')
    with pytest.raises(ValueError, match="holds a JSON array"):
        read(array)


def test_lone_surrogates_fail_their_own_row(tmp_path):
    """`\\ud800` is valid JSON, but no UTF-8 (Arrow) column can hold it: such a text, id or
    image reference is an invalid_input row, and the rows around it are read (the block with
    them used to raise UnicodeEncodeError and fail the job)."""
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"id": "a", "text": "good"}\n'
        '{"id": "b", "text": "x \\ud800 y"}\n'
        '{"id": "c\\udfff", "text": "good id-less"}\n'
        '{"id": "d", "text": "pic", "image": "p\\ud800.png"}\n'
        '{"id": "e", "text": "also good"}\n'
    )
    got = read(path, ReadSpec("id", "text", "image", block_rows=2))
    assert [(r["id"], r["status"], r["code"]) for r in got] == [
        ("a", "ok", None),
        ("b", "error", "invalid_input"),
        ("d.jsonl:2", "error", "invalid_input"),
        ("d", "error", "invalid_input"),
        ("e", "ok", None),
    ]
    assert got[1]["error"] == (
        "column 'text' holds a lone surrogate U+D800 at character 2, which is not valid "
        "Unicode text (it cannot be encoded as UTF-8)"
    )
    assert got[2]["error"].startswith("id column 'id' holds a lone surrogate U+DFFF")
    assert got[3]["error"].startswith("column 'image' holds a lone surrogate U+D800")


def test_csv_records_and_layout_errors(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('id\ttext\n1\thello\n2\t"multi\nline"\n3\ttoo\tmany\n\n4\t\n')
    got = read(path, ReadSpec("id", "text", None))
    assert [(r["id"], r["status"], r["text"]) for r in got] == [
        ("1", "ok", "hello"),
        ("2", "ok", "multi\nline"),
        ("d.tsv:2", "error", None),
        ("4", "ok", ""),
    ]
    assert got[2]["error"] == "CSV record has 3 fields, the header has 2"
    with pytest.raises(
        ValueError, match=r"missing column\(s\) \['body'\]; its columns are: id, text"
    ):
        read(path, ReadSpec("id", "body", None))


def test_txt_and_parquet_rows(tmp_path):
    txt = tmp_path / "d.txt.gz"
    txt.write_bytes(gzip.compress(b"first\r\n\n\xff\xfe bad\nlast"))
    got = read(txt)
    assert [(r["id"], r["status"], r["text"]) for r in got] == [
        ("d.txt.gz:0", "ok", "first"),
        ("d.txt.gz:1", "ok", ""),
        ("d.txt.gz:2", "error", None),
        ("d.txt.gz:3", "ok", "last"),
    ]
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"key": [10, None, 12], "text": ["a", "b", None]}), parquet)
    got = read(parquet, ReadSpec("key", "text", None, block_rows=2))
    assert [(r["id"], r["status"]) for r in got] == [
        ("10", "ok"),
        ("d.parquet:1", "error"),
        ("12", "ok"),
    ]
    pq.write_table(pa.table({"text": [1, 2]}), parquet)
    assert {r["code"] for r in read(parquet)} == {"invalid_input"}


# ------------------------------------------------------------------------------ resume
def test_done_set_marks_rows_skipped():
    done = DoneSet(np.unique(id_digests(["b", "d"])))
    assert done.contains(["a", "b", "c", "d"]).tolist() == [False, True, False, True]
    table = pa.table(
        {
            **{name: [None, None] for name in READ_SCHEMA.names},
            "id": ["a", "b"],
            "status": ["ok", "error"],
            "error": [None, "x"],
            "code": [None, "c"],
            "text": ["t", None],
            "image": [None, None],
            "image_ref": [None, None],
            "images": [None, None],
        },
        schema=READ_SCHEMA,
    )
    marked = mark_skipped(table, done).to_pylist()
    assert marked[0]["status"] == "ok" and marked[0]["text"] == "t"
    assert marked[1] == {
        **{name: None for name in READ_SCHEMA.names},
        "id": "b",
        "status": "skipped",
        "error": None,
        "code": None,
        "text": None,
        "image": None,
        "image_ref": None,
        "images": None,
    }


def write_part(folder: Path, ids: list[str], dim: int = 4, metadata: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    schema = output_schema(
        dim, metadata or {"model": "m", "dim": str(dim), "instruction": "", "normalized": "true"}
    )
    table = pa.Table.from_arrays(
        [
            pa.array(ids),
            pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(len(ids) * dim, np.float32)), dim),
            pa.array([3] * len(ids), pa.int32()),
        ],
        schema=schema,
    )
    pq.write_table(table, folder / part_name(ids))


def test_scan_counts_committed_files_and_duplicates(tmp_path):
    write_part(tmp_path, ["a", "b"])
    write_part(tmp_path, ["c", "a"])
    errors = pa.Table.from_arrays(
        [pa.array(["e"]), pa.array(["bad"]), pa.array(["invalid_input"])], schema=ERRORS_SCHEMA
    )
    (tmp_path / "_errors").mkdir()
    pq.write_table(errors, tmp_path / "_errors" / part_name(["e"]))
    (tmp_path / "_tmp").mkdir()
    pq.write_table(errors, tmp_path / "_tmp" / "part-half-written.parquet")  # never counted
    digests, scan = scan_output(resolve(str(tmp_path)))
    assert (scan.rows_embedded, scan.rows_failed, scan.tokens, scan.duplicate_ids) == (4, 1, 12, 1)
    assert scan.error_codes == {"invalid_input": 1}
    assert DoneSet(digests).contains(["a", "b", "c", "e", "f"]).tolist() == [
        True,
        True,
        True,
        True,
        False,
    ]


def test_check_output_refuses_other_jobs(tmp_path):
    identity = {"model": "m", "dim": 4, "instruction": None, "normalized": True}
    assert check_output(resolve(str(tmp_path / "new")), identity) is None
    write_part(tmp_path / "out", ["a"])
    assert (
        check_output(resolve(str(tmp_path / "out")), identity) is None
    )  # same job, known from the file metadata
    with pytest.raises(OutputMismatchError, match=r"dim 4 \(this job: 8\)"):
        check_output(resolve(str(tmp_path / "out")), {**identity, "dim": 8})
    (tmp_path / "out" / "_manifest.json").write_text(
        json.dumps({"identity": {**identity, "model": "other"}})
    )
    with pytest.raises(OutputMismatchError, match=r"model 'other' \(this job: 'm'\)"):
        check_output(resolve(str(tmp_path / "out")), identity)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "data.csv").write_text("x")
    with pytest.raises(OutputMismatchError, match="holds files this job did not write"):
        check_output(resolve(str(tmp_path / "foreign")), identity)
    write_part(tmp_path / "anonymous", ["a"], metadata={"x": "y"})
    with pytest.raises(OutputMismatchError, match="cannot tell which job wrote them"):
        check_output(resolve(str(tmp_path / "anonymous")), identity)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = resolve(str(tmp_path / "f.bin"))
    write_bytes_atomically(target, b"data")
    assert (tmp_path / "f.bin").read_bytes() == b"data"
    assert list((tmp_path / "_tmp").iterdir()) == []

    def failing(stream):
        stream.write(b"half")
        raise RuntimeError("killed")

    from pipelines.storage import write_atomically

    with pytest.raises(RuntimeError):
        write_atomically(resolve(str(tmp_path / "g.bin")), failing)
    assert not (tmp_path / "g.bin").exists() and list((tmp_path / "_tmp").iterdir()) == []


# ------------------------------------------------------------------------------- sink
def embedded_table(ids: list[str], statuses: list[str], dim: int = 4) -> pa.Table:
    from pipelines.rows import embedded_schema

    ok = np.array([status == "ok" for status in statuses])
    return pa.table(
        {
            "id": ids,
            "status": statuses,
            "error": [None if s != "error" else "bad" for s in statuses],
            "code": [None if s != "error" else "invalid_input" for s in statuses],
            "num_tokens": pa.array([5 if s == "ok" else None for s in statuses], pa.int32()),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ones(len(ids) * dim, np.float32)), dim, mask=pa.array(~ok)
            ),
        },
        schema=embedded_schema(dim),
    )


def test_sink_writes_each_row_once_and_stops_stale_writers(tmp_path):
    from pipelines.sink import EmbeddingSink, SinkSettings, StaleWriterError

    (tmp_path / "_manifest.json").write_text(json.dumps({"run_id": "run-1"}))
    settings = SinkSettings(
        str(tmp_path), (), 4, (("model", "m"), ("dim", "4")), rows_per_file=2, run_id="run-1"
    )
    blocks = [
        embedded_table(["a", "b", "c"], ["ok", "error", "ok"]),
        embedded_table(["d", "e"], ["ok", "skipped"]),
    ]
    sink = EmbeddingSink(settings)
    counts = sink.write(blocks, ctx=None)
    assert counts == {
        "embedded": 3,
        "failed": 1,
        "skipped": 1,
        "tokens": 15,
        "files": 3,
        "error_codes": {"invalid_input": 1},
    }
    names = sorted(p.name for p in tmp_path.glob("part-*.parquet"))
    assert len(names) == 2  # 3 rows, at most 2 per file
    sink.write(blocks, ctx=None)  # a retried task: same rows, same names, files replaced
    assert sorted(p.name for p in tmp_path.glob("part-*.parquet")) == names
    _, scan = scan_output(resolve(str(tmp_path)))
    assert (scan.rows_embedded, scan.rows_failed, scan.duplicate_ids) == (3, 1, 0)
    assert pq.read_schema(tmp_path / names[0]).metadata[b"model"] == b"m"

    (tmp_path / "_manifest.json").write_text(json.dumps({"run_id": "run-2"}))
    with pytest.raises(StaleWriterError, match="run-2 now owns"):
        sink.write([embedded_table(["z"], ["ok"])], ctx=None)
    assert not any(
        "z" in pq.read_table(p).column("id").to_pylist() for p in tmp_path.glob("part-*.parquet")
    )


# ----------------------------------------------------------------------------- stages
def read_table(texts: list) -> pa.Table:
    count = len(texts)
    return pa.table(
        {
            **{name: [None] * count for name in READ_SCHEMA.names},
            "id": [f"r{i}" for i in range(count)],
            "status": ["ok"] * count,
            "error": [None] * count,
            "code": [None] * count,
            "text": texts,
            "image": [None] * count,
            "image_ref": [None] * count,
            "images": [None] * count,
        },
        schema=READ_SCHEMA,
    )


def test_stages_on_tables_match_the_core(tiny_text_model_dir, tiny_text_embedder):
    from pipelines.stages import EmbedSettings, EmbedWorker, PrepareSettings, prepare_batch
    from qwen3_embed.options import LoadOptions

    texts = ["a short document", "", "x " * 200, "another one, a little longer than the first"]
    load = LoadOptions(
        model=str(tiny_text_model_dir),
        device="cpu",
        dtype="float32",
        max_length=64,
        max_batch_tokens=16384,
    )
    prepare = PrepareSettings(load, instruction=None, truncate=False)
    prepared = prepare_batch(read_table(texts), prepare)
    statuses = prepared.column("status").to_pylist()
    assert statuses == ["ok", "error", "error", "ok"]
    assert prepared.column("code").to_pylist()[1:3] == ["invalid_input", "input_too_long"]

    worker = EmbedWorker(EmbedSettings(load, 32))
    out = worker(prepared)
    good = [texts[0], texts[3]]
    reference = tiny_text_embedder.embed(good, dim=32)
    vectors = np.array(
        [v for v in out.column("embedding").to_pylist() if v is not None], dtype=np.float32
    )
    assert np.abs(vectors - reference.embeddings.numpy()).max() <= 1e-5
    assert [
        n for n in out.column("num_tokens").to_pylist() if n is not None
    ] == reference.sequence_lengths
    assert out.column("embedding").null_count == 2


# ------------------------------------------------------------------------------ plan
def test_plan_checks_before_any_cluster(tiny_text_model_dir, tmp_path, monkeypatch):
    from pipelines import plan_job

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"text": "x"}\n')
    (data / "b.txt").write_text("x\n")
    model = str(tiny_text_model_dir)
    plan = plan_job(JobConfig(input=str(data / "a.jsonl"), output=str(data / "out"), model=model))
    assert (plan.family, plan.dim, plan.batch_rows, plan.normalized) == ("text", 64, 256, True)
    with pytest.raises(ValueError, match="lies inside the input folder"):
        plan_job(JobConfig(input=str(data), output=str(data / "out"), model=model))
    with pytest.raises(
        ValueError,
        match=r"dim=16 is invalid for this model; valid values are integers in \[32, 64\]",
    ):
        plan_job(
            JobConfig(input=str(data / "a.jsonl"), output=str(tmp_path / "o"), model=model, dim=16)
        )
    with pytest.raises(ValueError, match="cannot apply to txt inputs"):
        plan_job(
            JobConfig(input=str(data), output=str(tmp_path / "o"), model=model, id_column="id")
        )
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(ValueError, match="num_cpus sizes a local cluster"):
        plan_job(
            JobConfig(
                input=str(data / "a.jsonl"), output=str(tmp_path / "o"), model=model, num_cpus=2
            )
        )


def test_a_failing_item_fails_alone():
    import torch

    from pipelines.rows import PREPARED_SCHEMA
    from pipelines.stages import EmbedWorker
    from qwen3_embed import EmbeddingOutput

    class Embedder:  # fails on any batch holding the 3-token item
        def embed_prepared(self, prepared, dim, errors="raise"):
            if any(item.num_tokens == 3 for item in prepared):
                raise RuntimeError("out of memory")
            return EmbeddingOutput(
                torch.ones(len(prepared), dim), len(prepared), [p.num_tokens for p in prepared]
            )

    worker = EmbedWorker.__new__(EmbedWorker)  # skip loading a model
    worker.embedder, worker.dim = Embedder(), 4
    lengths = [2, 3, 4]
    table = pa.table(
        {
            "id": ["a", "b", "c"],
            "status": ["ok"] * 3,
            "error": [None] * 3,
            "code": [None] * 3,
            "num_tokens": pa.array(lengths, pa.int32()),
            "input_ids": [list(range(n)) for n in lengths],
            "media": [None] * 3,
        },
        schema=PREPARED_SCHEMA,
    )
    out = worker(table).to_pylist()
    assert [row["status"] for row in out] == ["ok", "error", "ok"]
    assert out[1]["code"] == "embed_failed" and out[1]["error"] == "RuntimeError: out of memory"
    assert out[1]["embedding"] is None and out[0]["embedding"] == [1.0] * 4
    with pytest.raises(RuntimeError):  # every item of a batch failing alone: the replica is broken
        worker(table.take([1, 1]))


# ------------------------------------------------------------------------- media fetch
def test_fetch_retries_transient_failures_only():
    import urllib.error

    from pipelines.media_fetch import FetchFailed, is_transient, with_retries

    def http_error(code: int) -> urllib.error.HTTPError:
        return urllib.error.HTTPError("http://x/a.png", code, "status", {}, None)

    for error in (http_error(503), http_error(429), http_error(500), TimeoutError("slow"),
                  ConnectionResetError("reset"), urllib.error.URLError(TimeoutError("t")),
                  urllib.error.URLError(ConnectionRefusedError("refused")), OSError("AWS NETWORK")):  # fmt: skip
        assert is_transient(error), error
    for error in (http_error(404), http_error(403), http_error(400), FileNotFoundError("x"),
                  PermissionError("x"), urllib.error.URLError("unknown url type"), ValueError("bad")):  # fmt: skip
        assert not is_transient(error), error

    sleeps: list[float] = []
    answers = iter([http_error(503), ConnectionResetError("reset"), b"image"])

    def flaky() -> bytes:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert with_retries("u", flaky, attempts=4, backoff_s=1.0, sleep=sleeps.append) == b"image"
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # doubling
    calls = []

    def gone() -> bytes:
        calls.append(1)
        raise http_error(404)

    with pytest.raises(FetchFailed, match="not retried") as info:
        with_retries("u", gone, sleep=sleeps.append)
    assert not info.value.transient and len(calls) == 1

    def down() -> bytes:
        calls.append(1)
        raise TimeoutError("timed out")

    calls.clear()
    with pytest.raises(FetchFailed, match="transient failure on all 3 attempts") as info:
        with_retries("u", down, attempts=3, backoff_s=0.01, sleep=lambda _: None)
    assert info.value.transient and len(calls) == 3
