"""The batch job end to end on the session's local Ray cluster (2 CPUs) with the tiny text
checkpoint: vectors equal the core's, every input row lands in exactly one place, the formats,
resume, refusal, and S3 in both directions through moto's S3 server on loopback."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipelines import JobConfig, plan_job, run_embedding_job
from pipelines.resume import OutputMismatchError

QUERY = "Given a web search query, retrieve relevant passages that answer the query"


def job(**fields) -> JobConfig:
    fields.setdefault("progress", False)
    fields.setdefault("rows_per_file", 8)
    fields.setdefault("batch_rows", 8)
    return JobConfig(**fields)


def read_output(
    output: str, filesystem=None
) -> tuple[dict[str, np.ndarray], dict[str, int], pa.Schema]:
    dataset = pads.dataset(output, format="parquet", filesystem=filesystem)  # skips _errors/, _tmp/
    table = dataset.to_table()
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id is written twice"
    vectors = dict(
        zip(ids, np.array(table.column("embedding").to_pylist(), dtype=np.float32), strict=True)
    )
    tokens = dict(zip(ids, table.column("num_tokens").to_pylist(), strict=True))
    return vectors, tokens, dataset.schema


def read_errors(output: str, filesystem=None) -> dict[str, tuple[str, str]]:
    try:
        table = pads.dataset(
            f"{output.rstrip('/')}/_errors", format="parquet", filesystem=filesystem
        ).to_table()
    except FileNotFoundError:
        return {}
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an error id is written twice"
    return {row["id"]: (row["error"], row["code"]) for row in table.to_pylist()}


def assert_matches_core(
    embedder, vectors: dict[str, np.ndarray], texts: dict[str, str], **embed_kwargs
) -> None:
    ids = sorted(texts)
    assert sorted(vectors) == ids
    reference = embedder.embed([texts[i] for i in ids], **embed_kwargs).embeddings.numpy()
    got = np.stack([vectors[i] for i in ids])
    assert got.shape == reference.shape
    assert np.abs(got - reference).max() <= 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


# --------------------------------------------------------------------- text, id column
@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("docs")
    texts = {
        f"doc-{n:03d}": f"Document {n}: " + "embeddings map text to vectors. " * (n % 9 + 1)
        for n in range(40)
    }
    with open(folder / "docs.jsonl", "w") as handle:
        for doc_id, text in texts.items():
            handle.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return folder / "docs.jsonl", texts


@pytest.fixture(scope="module")
def document_job(ray_cluster, documents, tiny_text_model_dir, tmp_path_factory):
    path, _ = documents
    output = tmp_path_factory.mktemp("out") / "vectors"
    result = run_embedding_job(
        job(input=str(path), output=str(output), model=str(tiny_text_model_dir), id_column="id")
    )
    return result, output


def test_vectors_equal_the_core(document_job, documents, tiny_text_embedder, tiny_text_model_dir):
    result, output = document_job
    _, texts = documents
    vectors, tokens, schema = read_output(str(output))
    assert_matches_core(tiny_text_embedder, vectors, texts)
    assert tokens == dict(
        zip(
            sorted(texts),
            tiny_text_embedder.embed([texts[i] for i in sorted(texts)]).sequence_lengths,
            strict=True,
        )
    )
    assert schema.field("embedding").type == pa.list_(pa.float32(), 64)
    assert schema.field("num_tokens").type == pa.int32() and schema.field("id").type == pa.string()
    assert {
        k: schema.metadata[k.encode()].decode()
        for k in ("model", "dim", "instruction", "normalized")
    } == {"model": str(tiny_text_model_dir), "dim": "64", "instruction": "", "normalized": "true"}
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and result.consistent
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_failed"]) == (40, 40, 0)
    assert manifest["tokens"] == sum(tokens.values()) and manifest["dim"] == 64
    for key in ("model", "config", "wall_seconds", "rows_per_second", "tokens_per_second"):
        assert key in manifest
    assert manifest["config"]["id_column"] == "id"
    phases = manifest["phases"]  # where a small job's time went, from the replicas' own reports
    assert {"ray_start", "replica_ready", "first_batch", "pipeline"} <= set(phases)
    assert 0 < phases["replica_ready"] <= phases["first_batch"] <= phases["pipeline"]
    assert manifest["inputs"]["fingerprint"] and manifest["output_fingerprint"]
    # How the replicas ran the model, as `auto` resolved it there (CPU: padded, sdpa, fp32).
    assert manifest["forward"] == tiny_text_embedder.describe()


def test_instruction_and_dim(
    ray_cluster, documents, tiny_text_model_dir, tiny_text_embedder, tmp_path
):
    path, texts = documents
    output = tmp_path / "queries"
    run_embedding_job(
        job(
            input=str(path),
            output=str(output),
            model=str(tiny_text_model_dir),
            id_column="id",
            instruction=QUERY,
            dim=32,
        )
    )
    vectors, _, schema = read_output(str(output))
    assert schema.metadata[b"instruction"].decode() == QUERY and schema.metadata[b"dim"] == b"32"
    assert_matches_core(tiny_text_embedder, vectors, texts, instruction=QUERY, dim=32)


def test_refuses_output_of_another_job(
    document_job, documents, tiny_text_model_dir, tiny_text_model_noeos_dir
):
    _, output = document_job
    path, _ = documents
    same = dict(input=str(path), output=str(output), model=str(tiny_text_model_dir), id_column="id")
    plan_job(job(**same))  # the same job may resume
    for change, message in [
        ({"dim": 32}, r"dim 64 \(this job: 32\)"),
        ({"instruction": QUERY}, r"instruction None \(this job: 'Given a web search"),
        (
            {"model": str(tiny_text_model_noeos_dir)},
            "model '.*tiny-text0' \\(this job: '.*tiny-text-noeos0'\\)",
        ),
    ]:
        with pytest.raises(OutputMismatchError, match=message):
            plan_job(job(**{**same, **change}))


# ------------------------------------------------ formats, bad rows, resume by subset
@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory) -> tuple[Path, dict[str, str], dict[str, str]]:
    """Each format with good rows and each kind of bad row; returns (folder, {id: text} of
    good rows, {id: error code} of bad rows)."""
    root = tmp_path_factory.mktemp("mixed")
    good: dict[str, str] = {}
    bad: dict[str, str] = {}
    jsonl_lines = [
        json.dumps({"text": "the first json document"}),
        "",  # blank: no row
        "{broken json",
        json.dumps({"text": 42}),
        json.dumps({"text": ""}),
        json.dumps({"text": None}),
        json.dumps({"text": "long " * 300}),  # over max_length with truncation off
        json.dumps({"text": "the last json document"}),
    ]
    (root / "a.jsonl").write_text("\n".join(jsonl_lines) + "\n")
    good.update({"a.jsonl:0": "the first json document", "a.jsonl:7": "the last json document"})
    bad.update(
        {
            "a.jsonl:2": "invalid_row",
            "a.jsonl:3": "invalid_input",
            "a.jsonl:4": "invalid_input",
            "a.jsonl:5": "invalid_input",
            "a.jsonl:6": "input_too_long",
        }
    )

    (root / "tables").mkdir()
    (root / "tables" / "b.csv").write_text(
        'text,lang\nhello from csv,en\n"quoted, with comma",en\nthree,fields,here\n,en\n'
    )
    good.update({"tables/b.csv:0": "hello from csv", "tables/b.csv:1": "quoted, with comma"})
    bad.update({"tables/b.csv:2": "invalid_row", "tables/b.csv:3": "invalid_input"})

    (root / "c.txt.gz").write_bytes(gzip.compress(b"a line of text\n\nanother line\n"))
    good.update({"c.txt.gz:0": "a line of text", "c.txt.gz:2": "another line"})
    bad.update({"c.txt.gz:1": "invalid_input"})

    pq.write_table(
        pa.table({"text": ["parquet row zero", None, "parquet row two"]}),
        root / "tables" / "d.parquet",
    )
    good.update({"tables/d.parquet:0": "parquet row zero", "tables/d.parquet:2": "parquet row two"})
    bad.update({"tables/d.parquet:1": "invalid_input"})
    (root / "_SUCCESS").write_text("")
    return root, good, bad


def test_formats_bad_rows_and_resume(
    ray_cluster, mixed_corpus, tiny_text_model_dir, tiny_text_embedder, tmp_path
):
    root, good, bad = mixed_corpus
    output = tmp_path / "mixed-out"
    common = dict(output=str(output), model=str(tiny_text_model_dir), max_length=48, truncate=False)

    # First run: only the jsonl file (as if the job had stopped after it). Ids come from the
    # same root as the full run's, so the second run recognises these rows.
    first = run_embedding_job(job(input=str(root / "*.jsonl"), **common))
    assert (first.rows_in, first.rows_embedded, first.rows_failed) == (7, 2, 5) and first.consistent

    second = run_embedding_job(job(input=str(root), **common))
    run = second.manifest["this_run"]
    assert (
        run["rows_skipped"] == 7
        and run["rows_embedded"] + run["rows_failed"] == len(good) + len(bad) - 7
    )
    assert (second.rows_in, second.rows_embedded, second.rows_failed) == (
        len(good) + len(bad),
        len(good),
        len(bad),
    )
    assert second.consistent and second.duplicate_ids == 0

    vectors, _, _ = read_output(str(output))
    assert_matches_core(tiny_text_embedder, vectors, good)
    errors = read_errors(str(output))
    assert {row_id: code for row_id, (_, code) in errors.items()} == bad
    assert "not valid JSON" in errors["a.jsonl:2"][0]
    assert "more than max_length=48" in errors["a.jsonl:6"][0]
    assert errors["tables/b.csv:2"][0] == "CSV record has 3 fields, the header has 2"
    assert "empty" in errors["c.txt.gz:1"][0] and "None" in errors["tables/d.parquet:1"][0]
    assert set(vectors).isdisjoint(errors)
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["error_codes"] == {
        code: list(bad.values()).count(code) for code in set(bad.values())
    }


def test_lone_surrogates_are_error_rows_and_the_job_finishes(
    ray_cluster, tiny_text_model_dir, tiny_text_embedder, tmp_path
):
    """The red-team's line `{"id":"b","text":"x \\ud800 y"}` (and the same escape in an id)
    used to fail the whole job with UnicodeEncodeError and leave the manifest "running"."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.jsonl").write_text(
        '{"id": "a", "text": "a good line"}\n'
        '{"id": "b", "text": "x \\ud800 y"}\n'
        '{"id": "\\ud800", "text": "an id that is not text"}\n'
    )
    (root / "b.jsonl").write_text('{"id": "c", "text": "another good file"}\n')
    output = tmp_path / "out"
    result = run_embedding_job(
        job(input=str(root), output=str(output), model=str(tiny_text_model_dir), id_column="id")
    )
    assert (result.rows_in, result.rows_embedded, result.rows_failed) == (4, 2, 2)
    vectors, _, _ = read_output(str(output))
    assert_matches_core(tiny_text_embedder, vectors, {"a": "a good line", "c": "another good file"})
    errors = read_errors(str(output))
    assert {row_id: code for row_id, (_, code) in errors.items()} == {
        "b": "invalid_input",
        "a.jsonl:2": "invalid_input",
    }
    assert "lone surrogate U+D800" in errors["b"][0]
    assert json.loads((output / "_manifest.json").read_text())["status"] == "complete"


def test_a_failed_run_says_so_in_the_manifest(ray_cluster, tiny_text_model_dir, tmp_path):
    """A job that fails once it runs (here a read task meets a JSON array where JSON lines were
    promised) leaves `_manifest.json` "failed" with the reason, never "running"."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.jsonl").write_text('{"text": "fine"}\n')
    (root / "b.jsonl").write_text('[{"text": "an array"}]\n')
    output = tmp_path / "out"
    with pytest.raises(Exception, match="holds a JSON array"):
        run_embedding_job(job(input=str(root), output=str(output), model=str(tiny_text_model_dir)))
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["status"] == "failed", manifest
    assert "holds a JSON array" in manifest["error"] and "writer" not in manifest


def test_rerun_drops_done_files_without_reading_them(
    ray_cluster, tiny_text_model_dir, tiny_text_embedder, tmp_path
):
    # Resume by fragment: a file whose rows OUTPUT holds whole gets no read task. Proof: after
    # the first run a.jsonl is overwritten with as many bytes of other rows (100 lines that are
    # not JSON, ids a.jsonl:0..99) and its modification time put back, so path, size and time
    # still name the done fragment; a read of it would add error rows that are not in OUTPUT.
    root = tmp_path / "in"
    root.mkdir()
    texts = {f"a.jsonl:{n}": f"first file document {n:02d} " + "x" * 20 for n in range(5)}
    texts.update({f"b.jsonl:{n}": f"second file document {n}" for n in range(4)})
    for name in ("a", "b"):
        lines = [json.dumps({"text": v}) for k, v in texts.items() if k.startswith(name)]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    output = tmp_path / "out"
    config = job(input=str(root), output=str(output), model=str(tiny_text_model_dir))
    first = run_embedding_job(config)
    assert (first.rows_in, first.rows_embedded, first.consistent) == (9, 9, True)

    done = root / "a.jsonl"
    stat = done.stat()
    done.write_text("x\n" * (stat.st_size // 2) + "x" * (stat.st_size % 2))
    assert done.stat().st_size == stat.st_size
    os.utime(done, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (root / "c.jsonl").write_text(json.dumps({"text": "a late arrival"}) + "\n")
    texts["c.jsonl:0"] = "a late arrival"

    again = run_embedding_job(config)
    run = again.manifest["this_run"]
    assert (run["rows_skipped"], run["rows_embedded"], run["rows_failed"]) == (9, 1, 0)
    assert (again.rows_in, again.rows_embedded, again.rows_failed) == (10, 10, 0)
    assert again.consistent and "resume_scan" in again.manifest["phases"]
    vectors, _, _ = read_output(str(output))
    assert_matches_core(tiny_text_embedder, vectors, texts)


# -------------------------------------------------------------------------- S3 (moto: the `s3` fixture)
def test_s3_input_and_output(ray_cluster, s3, tiny_text_model_dir, tiny_text_embedder):
    import pyarrow.fs as pafs

    client, options = s3
    texts = {f"s3-{n}": f"object storage document number {n} " * (n % 4 + 1) for n in range(12)}
    lines = "".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in list(texts.items())[:6])
    client.put_object(Bucket="corpus", Key="in/part-a.jsonl", Body=lines.encode())
    sink = pa.BufferOutputStream()
    rest = list(texts.items())[6:]
    pq.write_table(pa.table({"id": [k for k, _ in rest], "text": [v for _, v in rest]}), sink)
    client.put_object(Bucket="corpus", Key="in/part-b.parquet", Body=sink.getvalue().to_pybytes())
    client.put_object(
        Bucket="corpus",
        Key="in/part-c.jsonl",
        Body=json.dumps({"id": "s3-bad", "text": " "}).encode() + b"\n",
    )

    config = job(
        input="s3://corpus/in/",
        output="s3://corpus/out/vectors",
        model=str(tiny_text_model_dir),
        id_column="id",
        storage_options=options,
    )
    result = run_embedding_job(config)
    assert (result.rows_in, result.rows_embedded, result.rows_failed) == (13, 12, 1)
    assert result.consistent

    filesystem = pafs.S3FileSystem(**options)
    vectors, _, schema = read_output("corpus/out/vectors", filesystem)
    assert_matches_core(tiny_text_embedder, vectors, texts)
    assert schema.metadata[b"model"].decode() == str(tiny_text_model_dir)
    assert set(read_errors("corpus/out/vectors", filesystem)) == {"s3-bad"}
    keys = [
        item["Key"] for item in client.list_objects_v2(Bucket="corpus", Prefix="out/")["Contents"]
    ]
    assert "out/vectors/_manifest.json" in keys and not any("_tmp" in key for key in keys)
    manifest = json.loads(
        client.get_object(Bucket="corpus", Key="out/vectors/_manifest.json")["Body"].read()
    )
    assert manifest["status"] == "complete" and manifest["rows_embedded"] == 12

    # Rerun on S3 with nothing changed: recognised from the listings alone (no Ray Data run).
    again = run_embedding_job(config)
    assert again.manifest["nothing_to_do"] and "ray_start" not in again.manifest["phases"]
    assert again.manifest["this_run"]["rows_skipped"] == 13 and again.rows_embedded == 12
    assert again.consistent
    # One more input object: the rerun reads everything, skips the 13 done rows (found by the
    # scan of OUTPUT on S3) and embeds the new one. Another job's dim is refused.
    client.put_object(
        Bucket="corpus",
        Key="in/part-d.jsonl",
        Body=json.dumps({"id": "s3-new", "text": "a late arrival"}).encode() + b"\n",
    )
    more = run_embedding_job(config)
    assert not more.manifest.get("nothing_to_do")
    assert more.manifest["this_run"]["rows_skipped"] == 13 and more.rows_embedded == 13
    assert more.consistent
    with pytest.raises(OutputMismatchError, match=r"dim 64 \(this job: 32\)"):
        plan_job(config.replace(dim=32))


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
