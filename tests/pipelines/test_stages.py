"""The job's prepare and embed stages (pipelines/stages.py) called directly on Arrow tables:
vectors equal the core's, a failing item fails alone."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.rows import READ_SCHEMA


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
