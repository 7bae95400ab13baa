"""The batch job's `--precision`: the output column in the asked precision, the core's rule
(`qwen3_embed.precision`, sentence-transformers' `quantize_embeddings`) applied to the same
vectors the core gives; int8 ranges from a calibration pass, recorded in the manifest and the
parquet metadata, kept on resume; another precision or other ranges refused like another
model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from pipelines import JobConfig, plan_job, run_embedding_job
from pipelines.resume import OutputMismatchError
from qwen3_embed.precision import calibration_ranges, quantize

DIM = 32


def job(**fields) -> JobConfig:
    fields.setdefault("progress", False)
    fields.setdefault("rows_per_file", 8)
    fields.setdefault("batch_rows", 8)
    fields.setdefault("dim", DIM)
    return JobConfig(**fields)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("precision-docs")
    texts = {
        f"doc-{n:02d}": f"Passage {n}: " + "quantised vectors save space. " * (n % 5 + 1)
        for n in range(24)
    }
    with open(folder / "docs.jsonl", "w") as handle:
        for doc_id, text in texts.items():
            handle.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return folder / "docs.jsonl", texts


def read_column(output: Path) -> tuple[list[str], np.ndarray, pa.Schema]:
    dataset = pads.dataset(str(output), format="parquet")
    table = dataset.to_table()
    values = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    return table.column("id").to_pylist(), values, dataset.schema


def core_vectors(embedder, texts: dict[str, str], ids: list[str]) -> np.ndarray:
    return embedder.embed([texts[i] for i in ids], dim=DIM).embeddings.numpy()


def test_int8_job_calibrates_records_ranges_and_equals_the_core_rule(
    ray_cluster, tiny_text_model_dir, tiny_text_embedder, corpus, tmp_path
):
    path, texts = corpus
    output = tmp_path / "int8"
    config = job(
        input=str(path),
        output=str(output),
        model=str(tiny_text_model_dir),
        precision="int8",
        calibration_rows=len(texts),  # the whole corpus: the ranges are its own min and max
    )
    result = run_embedding_job(config)
    assert result.consistent and result.manifest["rows_embedded"] == len(texts)
    assert f"precision    int8 (ranges: the first {len(texts)} rows embedded)" in result.summary()

    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["precision"]["name"] == "int8"
    ranges = np.asarray(manifest["precision"]["ranges"], dtype=np.float32)
    assert ranges.shape == (2, DIM)
    assert manifest["calibration"] == {
        "source": f"the first {len(texts)} rows embedded",
        "rows": len(texts),
    }
    ids, values, schema = read_column(output)
    assert schema.field("embedding").type == pa.list_(pa.int8(), DIM)
    assert schema.metadata[b"precision"] == b"int8"
    assert np.array_equal(
        np.asarray(json.loads(schema.metadata[b"precision_ranges"]), np.float32), ranges
    )
    reference = core_vectors(tiny_text_embedder, texts, ids)
    # The job's float32 vectors equal the core's to 1e-5, so its ranges do too ...
    assert np.abs(ranges - calibration_ranges(reference)).max() <= 1e-5
    # ... and its int8 values are the core's rule on them: a vector within 1e-5 of a bucket edge
    # may land one bucket over, nothing more.
    expected = quantize(reference, "int8", ranges).astype(int)
    assert np.abs(values.astype(int) - expected).max() <= 1
    assert (values == expected).mean() >= 0.99
    assert values.min() == -128 and values.max() == 127  # the corpus's own min and max

    # A rerun with another precision, or with other ranges, is refused like another model.
    with pytest.raises(OutputMismatchError, match="precision 'int8' \\(this job: 'binary'\\)"):
        plan_job(config.model_copy(update={"precision": "binary", "calibration": None}))
    other = tmp_path / "other-ranges.json"
    other.write_text(json.dumps((ranges * 2).tolist()))
    with pytest.raises(OutputMismatchError, match="other ranges"):
        plan_job(config.model_copy(update={"calibration": str(other)}))
    # A rerun resumes with OUTPUT's ranges (no second calibration).
    plan = plan_job(config)
    assert np.array_equal(plan.precision.ranges_array, ranges) and not plan.needs_calibration


@pytest.mark.slow
def test_binary_job_packs_the_sign_bits(
    ray_cluster, tiny_text_model_dir, tiny_text_embedder, corpus, tmp_path
):
    path, texts = corpus
    output = tmp_path / "binary"
    config = job(
        input=str(path), output=str(output), model=str(tiny_text_model_dir), precision="binary"
    )
    assert run_embedding_job(config).consistent
    ids, values, schema = read_column(output)
    assert schema.field("embedding").type == pa.list_(pa.int8(), DIM // 8)  # dim / 8 bytes
    assert schema.metadata[b"precision"] == b"binary" and b"precision_ranges" not in schema.metadata
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["precision"] == {"name": "binary"} and "calibration" not in manifest
    reference = core_vectors(tiny_text_embedder, texts, ids)
    bits = np.unpackbits((values.astype(np.int16) + 128).astype(np.uint8), axis=1)
    clear = np.abs(reference) > 1e-4  # a value within float noise of 0 may take either bit
    assert np.array_equal(bits[clear], (reference > 0)[clear])
    assert np.array_equal(
        quantize(reference, "binary")[clear.all(axis=1)], values[clear.all(axis=1)]
    )


def test_calibration_file_is_checked_before_the_job_starts(tiny_text_model_dir, corpus, tmp_path):
    path, _ = corpus
    ranges = np.vstack([np.full(DIM, -0.5), np.full(DIM, 0.5)]).astype(np.float32)
    manifest = tmp_path / "_manifest.json"
    manifest.write_text(json.dumps({"precision": {"name": "int8", "ranges": ranges.tolist()}}))
    common = dict(input=str(path), model=str(tiny_text_model_dir))
    plan = plan_job(
        job(output=str(tmp_path / "a"), calibration=str(manifest), precision="int8", **common)
    )
    assert np.array_equal(plan.precision.ranges_array, ranges) and not plan.needs_calibration
    assert plan.calibration_source == f"file {manifest}"
    with pytest.raises(ValueError, match="holds 'int8' ranges, not 'uint8'"):
        plan_job(
            job(output=str(tmp_path / "b"), calibration=str(manifest), precision="uint8", **common)
        )
    with pytest.raises(ValueError, match=r"shape \(2, 64\)"):
        plan_job(
            job(
                output=str(tmp_path / "c"),
                calibration=str(manifest),
                precision="int8",
                dim=64,
                **common,
            )
        )
    with pytest.raises(ValueError, match="takes none"):
        job(output=str(tmp_path / "d"), calibration=str(manifest), precision="binary", **common)


def test_precision_flag_values_are_the_core_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="float32.*float16.*int8.*uint8.*binary.*ubinary"):
        job(input="x", output=str(tmp_path), model="m", precision="int4")


def test_embed_dataset_uint8_with_a_jobs_ranges(
    ray_cluster, tiny_text_model_dir, tiny_text_embedder
):
    import ray

    from pipelines import EmbedStageConfig, embed_dataset

    texts = [f"row {n}: " + "compact vectors. " * (n % 4 + 1) for n in range(12)]
    reference = tiny_text_embedder.embed(texts, dim=DIM).embeddings.numpy()
    ranges = calibration_ranges(reference)
    with pytest.raises(ValueError, match="needs ranges"):
        EmbedStageConfig(model=str(tiny_text_model_dir), precision="uint8")
    with pytest.raises(ValueError, match="int8 and uint8 only"):
        EmbedStageConfig(model=str(tiny_text_model_dir), precision="binary", ranges=ranges)
    config = EmbedStageConfig(
        model=str(tiny_text_model_dir), dim=DIM, precision="uint8", ranges=ranges, batch_rows=4
    )
    dataset = embed_dataset(ray.data.from_items([{"text": t} for t in texts]), config)
    table = pa.concat_tables(ray.get(dataset.to_arrow_refs()))
    assert table.schema.field("embedding").type == pa.list_(pa.uint8(), DIM)
    got = dict(
        zip(
            table.column("text").to_pylist(),
            table.column("embedding").to_numpy(zero_copy_only=False),
            strict=True,
        )
    )
    values = np.stack([got[text] for text in texts])
    assert values.dtype == np.uint8 and values.shape == (len(texts), DIM)
    expected = quantize(reference, "uint8", ranges).astype(int)
    assert np.abs(values.astype(int) - expected).max() <= 1  # a bucket edge within 1e-5
    assert (values == expected).mean() >= 0.99
