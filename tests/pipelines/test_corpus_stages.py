"""The corpus stages called on Arrow tables without Ray (as Ray Data calls them): the chunking
prepare stage and the replica of `embed_dataset`, identical inputs embedded once, truncation
flagged by the core, the sink's document-whole files and fragment records."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.dataset_stage import (
    CHUNK_PLACE_COLUMNS,
    StageColumns,
    UserEmbedWorker,
    prepare_user_batch,
)
from pipelines.fragments import done_fragments, parse_provenance, provenance
from pipelines.sink import _pieces
from pipelines.stages import EmbedWorker, PrepareSettings
from qwen3_embed import LoadOptions
from qwen3_embed.chunking import chunk_text
from qwen3_embed.dedupe import unique_inputs

TEXTS = ["short text", "a longer document about vectors. " * 30, "", "short text"]


@pytest.fixture(scope="module")
def worker(tiny_text_model_dir, tiny_text_embedder):
    """A replica around the session's tiny embedder (no second model load)."""
    columns = StageColumns(
        "body",
        None,
        ("embedding", "num_tokens", "status", "error", "code"),
        ".",
        chunk_columns=CHUNK_PLACE_COLUMNS,
    )
    replica = UserEmbedWorker.__new__(UserEmbedWorker)
    replica.embedder, replica.dim, replica.columns = tiny_text_embedder, 64, columns
    return replica, columns


def test_embed_dataset_stages_chunk_each_row(worker, tiny_text_model_dir, tiny_text_embedder):
    replica, columns = worker
    load = LoadOptions(model=str(tiny_text_model_dir))
    settings = PrepareSettings(load, None, True, chunk_tokens=32, chunk_overlap=4)
    table = pa.table({"doc": ["a", "b", "c", "d"], "body": TEXTS, "n": pa.array([1, 2, 3, 4])})
    out = replica(prepare_user_batch(table, settings, columns)).to_pylist()

    expected = []
    for doc, text in zip(["a", "b", "c", "d"], TEXTS, strict=True):
        if not text:
            expected.append((doc, None))
            continue
        expected += [(doc, chunk) for chunk in chunk_text(tiny_text_embedder, text, 32, 4)]
    assert [row["doc"] for row in out] == [doc for doc, _ in expected]
    assert len(expected) > 6, "the long row is several chunks"
    for row, (doc, chunk) in zip(out, expected, strict=True):
        assert row["n"] == {"a": 1, "b": 2, "c": 3, "d": 4}[doc]  # the row's columns, repeated
        if chunk is None:
            assert row["status"] == "error" and row["code"] == "invalid_input"
            assert row["chunk_index"] is None and row["embedding"] is None
            continue
        assert (row["chunk_index"], row["char_start"], row["char_end"]) == (
            chunk.index,
            chunk.char_start,
            chunk.char_end,
        )
        piece = TEXTS["abcd".index(doc)][chunk.char_start : chunk.char_end]
        reference = tiny_text_embedder.embed([piece]).embeddings[0].numpy()
        assert np.abs(np.array(row["embedding"], dtype=np.float32) - reference).max() <= 1e-5
        assert row["num_tokens"] == chunk.num_tokens <= 32
    assert set(out[0]) == {"doc", "body", "n", *CHUNK_PLACE_COLUMNS, *columns.outputs}


def test_identical_inputs_are_embedded_once(tiny_text_model_dir, tiny_text_embedder):
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(tiny_text_embedder, name)

        def embed_prepared(self, prepared, dim, errors="raise"):
            calls.append(len(prepared))
            return tiny_text_embedder.embed_prepared(prepared, dim, errors=errors)

    from pipelines.stages import prepare_batch

    replica = EmbedWorker.__new__(EmbedWorker)
    replica.embedder, replica.dim = Counting(), 64
    load = LoadOptions(model=str(tiny_text_model_dir))
    texts = ["same words", "other words", "same words", "same words"]
    table = pa.table(
        {
            "id": ["a", "b", "c", "d"],
            "status": ["ok"] * 4,
            "error": [None] * 4,
            "code": [None] * 4,
            "text": texts,
            "image": pa.nulls(4, pa.binary()),
            "image_ref": pa.nulls(4, pa.string()),
            "images": pa.nulls(
                4, pa.list_(pa.struct([("bytes", pa.binary()), ("ref", pa.string())]))
            ),
        }
    )
    out = replica(prepare_batch(table, PrepareSettings(load, None, True))).to_pylist()
    assert calls == [2], "two distinct inputs, one forward call"
    assert [row["reused"] for row in out] == [False, False, True, True]
    reference = tiny_text_embedder.embed(texts).embeddings.numpy()
    got = np.array([row["embedding"] for row in out], dtype=np.float32)
    assert np.abs(got - reference).max() <= 1e-5


def test_unique_inputs_tell_media_apart():
    from qwen3_embed import PreparedInput

    image = np.zeros((2, 2, 3), np.uint8)
    other = image.copy()
    other[0, 0, 0] = 1
    items = [
        PreparedInput([1, 2, 3]),
        PreparedInput([1, 2, 3], {"pixels": image}),
        PreparedInput([1, 2, 3], {"pixels": image.copy()}),
        PreparedInput([1, 2, 3], {"pixels": other}),
        PreparedInput([1, 2, 3]),
        PreparedInput([1, 2]),
    ]
    assert unique_inputs(items) == ([0, 1, 3, 5], [0, 1, 1, 2, 0, 3])


def test_core_flags_truncated_inputs_only(tiny_text_embedder):
    limit = 12
    fits = "a b c d e"
    prepared = tiny_text_embedder.prepare(["x " * 40, fits], max_length=limit)
    assert prepared[0].num_tokens == limit and prepared[0].truncated
    assert not prepared[1].truncated
    # Exactly max_length tokens without a cut is not truncated.
    exact = tiny_text_embedder.prepare([fits], max_length=prepared[1].num_tokens)[0]
    assert exact.num_tokens == prepared[1].num_tokens and not exact.truncated


def _chunk_rows(docs: list[tuple[str, int, int]], fragment: str = "k") -> pa.Table:
    """(doc_id, chunks written, chunks the document has) -> rows as the sink sees them."""
    ids, doc_ids, counts, indices = [], [], [], []
    for doc, written, total in docs:
        for index in range(written):
            ids.append(f"{doc}#{index}")
            doc_ids.append(doc)
            counts.append(total)
            indices.append(index)
    count = len(ids)
    return pa.table(
        {
            "id": ids,
            "doc_id": doc_ids,
            "chunk_index": pa.array(indices, pa.int32()),
            "chunk_count": pa.array(counts, pa.int32()),
            "fragment": [fragment] * count,
            "fragment_rows": pa.array([None] * (count - 1) + [3], pa.int64()),
        }
    )


def test_files_never_cut_a_document_and_records_count_whole_documents():
    rows = _chunk_rows([("a", 3, 3), ("b", 4, 4), ("c", 1, 1)])
    assert _pieces(rows, 2) == [(0, 3), (3, 4), (7, 1)]  # each file ends at a document's end
    record = parse_provenance({b"qwen3_embed.fragments": provenance(rows)})
    assert record["documents"] == {"k": 3} and record["counts"] == record["chunks"] == {"k": 8}
    # Done: 3 documents of 3, and the rows the rerun skips are the 8 chunk rows.
    assert done_fragments([record], {"k"}) == {"k": 8}
    half = parse_provenance(
        {b"qwen3_embed.fragments": provenance(_chunk_rows([("a", 2, 3), ("b", 4, 4), ("c", 1, 1)]))}
    )
    assert half["documents"] == {"k": 2} and done_fragments([half], {"k"}) == {}
