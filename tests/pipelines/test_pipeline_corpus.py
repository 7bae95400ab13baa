"""The corpus job (issue 25, items 1-3 and 6) on the session's local Ray cluster with the tiny
text checkpoint: chunks with offsets whose vectors equal the core's for the slice, carried
columns with their Arrow types, resume of a half-written document, identical inputs embedded
once, truncation counted, and the refusals that come before Ray starts."""

from __future__ import annotations

import datetime
import json

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipelines import JobConfig, plan_job, run_embedding_job
from pipelines.cli import main as cli_main
from pipelines.fragments import PROVENANCE_KEY
from qwen3_embed.chunking import chunk_text

CHUNK, OVERLAP = 40, 6
BOILERPLATE = "Terms of use: all rights reserved. Contact us for details."


def job(**fields) -> JobConfig:
    fields.setdefault("progress", False)
    fields.setdefault("rows_per_file", 16)
    fields.setdefault("batch_rows", 4)
    return JobConfig(**fields)


def _text(n: int) -> str:
    words = " ".join(f"w{n}x{k}" for k in range(n * 7 % 60 + 3))
    return f"Document {n}. " + ("Sentences about vectors. " + words + ".\n\n") * (n % 5 + 1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A parquet corpus with typed side columns, long and short documents, two identical
    boilerplate documents and one empty text (refused whole)."""
    folder = tmp_path_factory.mktemp("corpus")
    texts = {f"d{n:02d}": _text(n) for n in range(12)}
    texts["dup-a"] = texts["dup-b"] = BOILERPLATE
    texts["empty"] = "   "
    ids = list(texts)
    table = pa.table(
        {
            "id": ids,
            "text": [texts[i] for i in ids],
            "year": pa.array([2000 + n for n in range(len(ids))], pa.int64()),
            "tags": pa.array([[f"t{n}", "x"] for n in range(len(ids))], pa.list_(pa.string())),
            "seen": pa.array(
                [datetime.datetime(2024, 1, 1 + n) for n in range(len(ids))], pa.timestamp("ms")
            ),
            "url": [f"https://example.com/{i}" for i in ids],
        }
    )
    pq.write_table(table, folder / "docs.parquet", row_group_size=5)
    return folder / "docs.parquet", texts, table


def read_rows(output) -> pa.Table:
    return pads.dataset(str(output), format="parquet").to_table()


@pytest.fixture(scope="module")
def chunked(ray_cluster, corpus, tiny_text_model_dir, tmp_path_factory):
    path, _, _ = corpus
    output = tmp_path_factory.mktemp("chunked") / "out"
    config = job(
        input=str(path),
        output=str(output),
        model=str(tiny_text_model_dir),
        chunk_tokens=CHUNK,
        chunk_overlap=OVERLAP,
        keep_columns=("year", "tags", "seen", "url"),
    )
    return run_embedding_job(config), output, config


def test_chunks_are_the_core_chunks_and_their_vectors_the_slices(
    chunked, corpus, tiny_text_embedder
):
    result, output, _ = chunked
    _, texts, _ = corpus
    rows = read_rows(output)
    by_id = {row["id"]: row for row in rows.to_pylist()}
    assert len(by_id) == rows.num_rows, "an id is written twice"
    expected = {}
    for doc_id, text in texts.items():
        if not text.strip():
            continue
        for chunk in chunk_text(tiny_text_embedder, text, CHUNK, OVERLAP):
            expected[f"{doc_id}#{chunk.index}"] = (doc_id, chunk)
    assert sorted(by_id) == sorted(expected)
    assert any(chunk.index >= 3 for _, chunk in expected.values()), "some document is long"
    slices = []
    for row_id, (doc_id, chunk) in expected.items():
        row = by_id[row_id]
        assert (row["doc_id"], row["chunk_index"]) == (doc_id, chunk.index)
        assert (row["char_start"], row["char_end"]) == (chunk.char_start, chunk.char_end)
        assert row["num_tokens"] == chunk.num_tokens <= CHUNK
        slices.append(texts[doc_id][chunk.char_start : chunk.char_end])
    reference = tiny_text_embedder.embed(slices).embeddings.numpy()
    got = np.array([by_id[row_id]["embedding"] for row_id in expected], dtype=np.float32)
    assert np.abs(got - reference).max() <= 1e-5

    manifest = result.manifest
    assert manifest["chunking"] == {"chunk_tokens": CHUNK, "chunk_overlap": OVERLAP}
    assert manifest["documents_in"] == len(texts)
    assert manifest["chunks"] == len(expected) == result.rows_embedded
    assert result.rows_failed == 1 and result.consistent  # the empty document, whole
    assert manifest["rows_in"] == len(expected) + 1
    assert manifest["rows_truncated"] == 0
    # The two boilerplate documents are one input within one replica call: embedded once.
    assert manifest["duplicates_reused"] >= 1
    assert by_id["dup-a#0"]["embedding"] == by_id["dup-b#0"]["embedding"]
    errors = pads.dataset(str(output / "_errors"), format="parquet").to_table().to_pylist()
    assert [(row["id"], row["code"]) for row in errors] == [("empty", "invalid_input")]
    assert "chunks" in result.summary() and "from 15 documents" in result.summary()


def test_carried_columns_keep_their_types(chunked, corpus):
    _, output, _ = chunked
    _, _, table = corpus
    schema = pq.read_schema(next(output.glob("part-*.parquet")))
    assert schema.names == [
        "id",
        "doc_id",
        "chunk_index",
        "char_start",
        "char_end",
        "embedding",
        "num_tokens",
        "year",
        "tags",
        "seen",
        "url",
    ]
    for name in ("year", "tags", "seen", "url"):
        assert schema.field(name).type == table.schema.field(name).type, name
    assert json.loads(schema.metadata[b"chunking"]) == {"chunk_tokens": CHUNK, "chunk_overlap": 6}
    source = {row["id"]: row for row in table.to_pylist()}
    for row in read_rows(output).to_pylist():
        document = source[row["doc_id"]]
        assert [row[name] for name in ("year", "tags", "seen", "url")] == [
            document[name] for name in ("year", "tags", "seen", "url")
        ]


def test_rerun_after_a_half_written_document_writes_each_chunk_once(
    ray_cluster, chunked, corpus, tiny_text_model_dir, tmp_path, tiny_text_embedder
):
    """What a kill leaves behind, made on purpose: one part file gone, and another with only
    part of a document's chunks (rewritten without its record, as files from before records
    were kept). The rerun embeds exactly the missing chunks."""
    import shutil

    _, output, config = chunked
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    parts = sorted(copy.glob("part-*.parquet"))
    assert len(parts) >= 3
    parts[0].unlink()
    table = pq.read_table(parts[1])
    first_doc = table.column("doc_id")[0].as_py()
    chunks_of_first = [row for row in table.to_pylist() if row["doc_id"] == first_doc]
    assert len(chunks_of_first) >= 2, "the rewritten file must split a document"
    keep = [index for index, row in enumerate(table.to_pylist()) if row["id"] != f"{first_doc}#0"]
    half = table.take(keep)
    metadata = {k: v for k, v in (half.schema.metadata or {}).items() if k != PROVENANCE_KEY}
    pq.write_table(half.replace_schema_metadata(metadata), parts[1])

    again = run_embedding_job(config.replace(output=str(copy)))
    whole = read_rows(output)
    rows = read_rows(copy)
    ids = rows.column("id").to_pylist()
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(whole.column("id").to_pylist())
    assert again.consistent and again.rows_embedded == whole.num_rows
    assert again.manifest["this_run"]["rows_skipped"] > 0
    assert again.manifest["documents_in"] == len(corpus[1])
    assert again.manifest["chunks"] == whole.num_rows  # every chunk row, skipped ones included
    reference = dict(
        zip(whole.column("id").to_pylist(), whole.column("embedding").to_pylist(), strict=True)
    )
    for row in rows.to_pylist():
        assert np.allclose(row["embedding"], reference[row["id"]], atol=1e-5)


def test_truncation_is_counted_and_hinted(ray_cluster, tiny_text_model_dir, tmp_path):
    path = tmp_path / "docs.jsonl"
    texts = ["short one", "a long document " * 20, "another long one " * 30, "tiny"]
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    result = run_embedding_job(
        job(
            input=str(path),
            output=str(tmp_path / "o"),
            model=str(tiny_text_model_dir),
            max_length=16,
        )
    )
    assert result.manifest["rows_truncated"] == 2 and result.consistent
    assert "--chunk-tokens" in result.summary()
    assert "documents_in" not in result.manifest and "chunks" not in result.manifest


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--keep-columns", "year,nope"],
            "--keep-columns nope: no such column in docs.parquet; its columns are: id, text, year, tags, seen, url",
        ),
        (["--keep-columns", "embedding"], "reserved for OUTPUT's own columns"),
        (["--chunk-tokens", "100000"], "more than max_length"),
        (["--chunk-tokens", "8", "--chunk-overlap", "8"], "chunk_overlap=8 must be smaller"),
    ],
)
def test_refused_before_ray_starts(corpus, tiny_text_model_dir, tmp_path, capsys, flags, message):
    path, _, _ = corpus
    code = cli_main(
        [str(path), str(tmp_path / "never"), "--model", str(tiny_text_model_dir), *flags]
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and message in error and len(error.splitlines()) == 1, error
    assert not (tmp_path / "never").exists()


def test_plan_refuses_keep_columns_on_text_files(tiny_text_model_dir, tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    with pytest.raises(ValueError, match="txt inputs have no columns"):
        plan_job(
            JobConfig(
                input=str(tmp_path / "a.txt"),
                output=str(tmp_path / "o"),
                model=str(tiny_text_model_dir),
                keep_columns="x",
            )
        )


@pytest.mark.slow
def test_killed_chunked_job_then_rerun_leaves_each_chunk_once(
    ray_cluster, tiny_text_model_dir, tiny_text_embedder, tmp_path
):
    """A real kill: `qwen3-embed embed --chunk-tokens` as a user runs it, its process group
    SIGKILLed once a part file is on disk and before the job ends, then the same command again.
    Every chunk of every document is in OUTPUT exactly once, the manifest's counts are whole,
    and a sample of chunk vectors is the core's vector of the slice."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from killed_driver import wait_for_first_part, wait_until_output_settles
    from test_pipeline_cli import ids_in

    corpus = tmp_path / "long.jsonl"
    texts = {f"doc{n:03d}": _text(n) for n in range(50)}
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in texts.items()))
    expected = {
        doc_id: chunk_text(tiny_text_embedder, text, 24, 4) for doc_id, text in texts.items()
    }
    total = sum(len(chunks) for chunks in expected.values())
    assert total >= 30 * len(texts), "documents of many chunks each"
    output = tmp_path / "out"
    command = [str(Path(sys.executable).parent / "qwen3-embed"), "embed", str(corpus),
               str(output), "--model", str(tiny_text_model_dir), "--chunk-tokens", "24",
               "--chunk-overlap", "4", "--rows-per-file", "40", "--batch-rows", "16",
               "--no-progress"]  # fmt: skip
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    driver = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, as a shell job would be
    )  # fmt: skip
    wait_for_first_part(driver, output, timeout_s=240)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    assert json.loads((output / "_manifest.json").read_text())["status"] == "running", (
        "the job finished before it could be interrupted"
    )
    wait_until_output_settles(output)
    written_before = len(ids_in(output))
    assert 0 < written_before < total

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert not (output / "_errors").exists()
    rows = read_rows(output)
    ids = rows.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == total
    pairs = list(
        zip(rows.column("doc_id").to_pylist(), rows.column("chunk_index").to_pylist(), strict=True)
    )
    assert len(set(pairs)) == len(pairs)
    assert sorted(pairs) == sorted(
        (doc_id, chunk.index) for doc_id, chunks in expected.items() for chunk in chunks
    )
    assert all(row_id == f"{d}#{i}" for row_id, (d, i) in zip(ids, pairs, strict=True))
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["consistent"]
    assert (manifest["documents_in"], manifest["chunks"]) == (len(texts), total)
    run = manifest["this_run"]
    print("chunked driver kill:", {"written_before": written_before, **run})
    assert run["rows_skipped"] == written_before
    assert run["rows_embedded"] == total - written_before

    by_id = {row["id"]: row for row in rows.to_pylist()}
    sample = [  # first, middle and last chunks of every 17th document
        f"{doc_id}#{i}"
        for doc_id in sorted(texts)[::17]
        for i in sorted({0, len(expected[doc_id]) // 2, len(expected[doc_id]) - 1})
    ]
    slices = []
    for row_id in sample:
        row = by_id[row_id]
        chunk = expected[row["doc_id"]][row["chunk_index"]]
        assert (row["char_start"], row["char_end"]) == (chunk.char_start, chunk.char_end)
        slices.append(texts[row["doc_id"]][row["char_start"] : row["char_end"]])
    reference = tiny_text_embedder.embed(slices).embeddings.numpy()
    got = np.array([by_id[row_id]["embedding"] for row_id in sample], dtype=np.float32)
    assert np.abs(got - reference).max() <= 1e-5


def test_chunked_int8_calibrates_on_chunks_and_equals_sentence_transformers(
    ray_cluster, corpus, tiny_text_model_dir, tiny_text_embedder, tmp_path
):
    """`--chunk-tokens` with `--precision int8`: the calibration sample is the chunks of the
    first `calibration_rows` documents (not the documents whole), its ranges are recorded in
    the manifest and the parquet metadata, and every row is sentence-transformers'
    `quantize_embeddings` of the core's vector of its slice, with those ranges."""
    from sentence_transformers.quantization import quantize_embeddings

    path, texts, table = corpus
    first = table.column("id").to_pylist()[:4]
    output = tmp_path / "int8"
    result = run_embedding_job(
        job(
            input=str(path),
            output=str(output),
            model=str(tiny_text_model_dir),
            chunk_tokens=CHUNK,
            chunk_overlap=OVERLAP,
            precision="int8",
            calibration_rows=len(first),
        )
    )
    assert result.consistent and result.rows_failed == 1  # the empty document
    sample = [
        texts[doc_id][chunk.char_start : chunk.char_end]
        for doc_id in first
        for chunk in chunk_text(tiny_text_embedder, texts[doc_id], CHUNK, OVERLAP)
    ]
    assert len(sample) > len(first), "the first documents have several chunks"
    manifest = result.manifest
    ranges = np.asarray(manifest["precision"]["ranges"], dtype=np.float32)
    chunk_vectors = tiny_text_embedder.embed(sample).embeddings.numpy()
    assert np.abs(ranges - np.stack([chunk_vectors.min(0), chunk_vectors.max(0)])).max() <= 1e-5
    documents = tiny_text_embedder.embed([texts[i] for i in first]).embeddings.numpy()
    whole = np.stack([documents.min(0), documents.max(0)])
    assert np.abs(ranges - whole).max() > 1e-3, "ranges of whole documents would differ"
    assert manifest["calibration"] == {
        "source": f"the {len(sample)} chunks of the first {len(first)} documents",
        "rows": len(sample),
    }

    rows = read_rows(output)
    schema = pq.read_schema(next(output.glob("part-*.parquet")))
    assert schema.metadata[b"precision"] == b"int8"
    assert np.array_equal(np.asarray(json.loads(schema.metadata[b"precision_ranges"])), ranges)
    slices = [texts[row["doc_id"]][row["char_start"] : row["char_end"]] for row in rows.to_pylist()]
    reference = tiny_text_embedder.embed(slices).embeddings.numpy()
    expected = quantize_embeddings(reference, "int8", ranges=ranges).astype(int)
    values = np.stack(rows.column("embedding").to_numpy(zero_copy_only=False)).astype(int)
    assert values.shape == expected.shape and rows.num_rows > len(texts)
    # The job's float32 vectors equal the core's to 1e-5: a value that close to a bucket edge
    # may land one bucket over, nothing more.
    assert np.abs(values - expected).max() <= 1 and (values == expected).mean() >= 0.99


def test_jsonl_carried_value_of_another_type_is_an_error_row(
    ray_cluster, tiny_text_model_dir, tmp_path
):
    """Carried JSON columns are typed from the first records (`carried.JSON_SAMPLE_RECORDS`); a
    later record whose value that type cannot hold unchanged (a string or 1.5 in an int64
    column, an unknown key in an object) is an `invalid_input` row naming the column and the
    type, and every other row is embedded with its values as they were."""
    from pipelines.carried import JSON_SAMPLE_RECORDS

    records = [
        {"id": f"r{n}", "text": f"record {n}", "year": 1900 + n, "meta": {"a": n}}
        for n in range(JSON_SAMPLE_RECORDS + 4)
    ]
    late = JSON_SAMPLE_RECORDS
    records[late]["year"] = "1999"
    records[late + 1]["year"] = 1999.5  # Arrow alone would store 1999
    records[late + 2]["meta"] = {"a": 1, "extra": "x"}  # Arrow alone would drop "extra"
    records[late + 3]["year"] = 2001.0  # the same number as 2001: fits
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    output = tmp_path / "out"
    result = run_embedding_job(
        job(
            input=str(path),
            output=str(output),
            model=str(tiny_text_model_dir),
            id_column="id",
            keep_columns=("year", "meta"),
            rows_per_file=512,
            batch_rows=128,
        )
    )
    assert result.consistent and (result.rows_embedded, result.rows_failed) == (len(records) - 3, 3)
    rows = read_rows(output)
    assert rows.schema.field("year").type == pa.int64()
    values = {row["id"]: (row["year"], row["meta"]) for row in rows.to_pylist()}
    expected = {r["id"]: (int(r["year"]), r["meta"]) for i, r in enumerate(records) if i not in (late, late + 1, late + 2)}  # fmt: skip
    assert values == expected
    errors = pads.dataset(str(output / "_errors"), format="parquet").to_table().to_pylist()
    found = {row["id"]: (row["code"], row["error"]) for row in errors}
    assert set(found) == {f"r{late}", f"r{late + 1}", f"r{late + 2}"}
    assert {code for code, _ in found.values()} == {"invalid_input"}
    assert "carried column 'year' must hold int64 values" in found[f"r{late}"][1]
    assert 'got string "1999"' in found[f"r{late}"][1]
    assert "got number 1999.5" in found[f"r{late + 1}"][1]
    assert "carried column 'meta' must hold struct<a: int64>" in found[f"r{late + 2}"][1]
