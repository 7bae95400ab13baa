"""`embed_dataset` on users' own Ray Datasets (session's local Ray, tiny checkpoints): vectors
equal the core's, the user's columns come through, bad rows become error rows and no row is
lost or doubled; composed with `read_parquet` / `write_parquet`; a VL image column."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipelines import EmbedStageConfig, embed_dataset


def test_from_items_custom_column_bad_rows(ray_cluster, tiny_text_model_dir, tiny_text_embedder):
    import ray

    good = {f"d{n}": f"passage {n}: " + "vectors for retrieval. " * (n % 3 + 1) for n in range(10)}
    bad = {"empty": "", "null": None, "long": "long " * 300}
    lang = {key: ("en" if n % 2 else "de") for n, key in enumerate([*good, *bad])}
    items = [{"doc": key, "body": text, "lang": lang[key]} for key, text in {**good, **bad}.items()]
    items.insert(4, items.pop(-1))  # a bad row in the middle of a block, not only at the end
    config = EmbedStageConfig(
        model=str(tiny_text_model_dir),
        text_column="body",
        batch_rows=4,
        max_length=48,
        truncate=False,
    )
    rows = embed_dataset(ray.data.from_items(items), config).take_all()

    assert sorted(row["doc"] for row in rows) == sorted(lang)  # each row once, none lost
    assert all(row["lang"] == lang[row["doc"]] for row in rows)
    assert all(row["body"] == {**good, **bad}[row["doc"]] for row in rows)
    assert set(rows[0]) == {
        "doc",
        "body",
        "lang",
        "embedding",
        "num_tokens",
        "embedding_status",
        "embedding_error",
        "embedding_error_code",
    }
    by_doc = {row["doc"]: row for row in rows}
    ids = sorted(good)
    statuses = {
        key: (by_doc[key]["embedding_status"], by_doc[key]["embedding_error"]) for key in ids
    }
    assert statuses == {key: ("ok", None) for key in ids}
    shapes = {key: np.shape(by_doc[key]["embedding"]) for key in ids}
    assert shapes == {key: (64,) for key in ids}
    reference = tiny_text_embedder.embed([good[key] for key in ids])
    got = np.array([by_doc[key]["embedding"] for key in ids], dtype=np.float32)
    assert np.abs(got - reference.embeddings.numpy()).max() <= 1e-5
    assert [by_doc[key]["num_tokens"] for key in ids] == list(reference.sequence_lengths)
    assert all(by_doc[key]["embedding_status"] == "ok" for key in ids)
    assert all(by_doc[key]["embedding_error"] is None for key in ids)
    codes = {key: by_doc[key]["embedding_error_code"] for key in bad}
    assert codes == {"empty": "invalid_input", "null": "invalid_input", "long": "input_too_long"}
    for key in bad:
        row = by_doc[key]
        assert row["embedding_status"] == "error" and row["embedding"] is None
        assert row["embedding_error"] and row["num_tokens"] is None
    assert "more than max_length=48" in by_doc["long"]["embedding_error"]


def test_read_parquet_to_write_parquet_named_columns(
    ray_cluster, tiny_text_model_dir, tiny_text_embedder, tmp_path
):
    import ray

    texts = {f"k{n:02d}": f"a parquet document about topic {n}" for n in range(12)}
    source = tmp_path / "docs"
    source.mkdir()
    keys = list(texts)
    for part in range(2):  # two files: two read tasks
        chunk = keys[part::2]
        pq.write_table(
            pa.table({"key": chunk, "content": [texts[k] for k in chunk]}),
            source / f"part-{part}.parquet",
        )
    config = EmbedStageConfig(
        model=str(tiny_text_model_dir),
        text_column="content",
        dim=32,
        embedding_column="vector",
        status_column="state",
        batch_rows=5,
    )
    ds = embed_dataset(ray.data.read_parquet(str(source)), config)
    ds.write_parquet(str(tmp_path / "vectors"))

    table = pads.dataset(str(tmp_path / "vectors"), format="parquet").to_table()
    assert sorted(table.column("key").to_pylist()) == sorted(texts)
    assert table.column_names[:2] == ["key", "content"]
    assert {"vector", "state", "num_tokens"} <= set(table.column_names)
    assert set(table.column("state").to_pylist()) == {"ok"}
    vectors = dict(
        zip(
            table.column("key").to_pylist(),
            np.array(table.column("vector").to_pylist(), dtype=np.float32),
            strict=True,
        )
    )
    reference = tiny_text_embedder.embed([texts[k] for k in keys], dim=32).embeddings.numpy()
    assert np.abs(np.stack([vectors[k] for k in keys]) - reference).max() <= 1e-5


def test_configuration_mistakes_are_raised_not_error_rows(tiny_text_model_dir):
    from pipelines.dataset_stage import StageColumns, to_stage_rows

    columns = StageColumns("body", None, EmbedStageConfig(model="m").output_columns, "/data")
    block = pa.table({"body": ["a", "b"], "embedding": [1, 2]})
    with pytest.raises(ValueError, match=r"already has column\(s\) \['embedding'\]"):
        to_stage_rows(block, columns)
    with pytest.raises(ValueError, match=r"has no column\(s\) \['body'\]"):
        to_stage_rows(pa.table({"text": ["a"]}), columns)
    with pytest.raises(ValueError, match="needs a VL model"):
        embed_dataset(None, EmbedStageConfig(model=str(tiny_text_model_dir), image_column="img"))
    with pytest.raises(ValueError, match="output column names must differ"):
        EmbedStageConfig(model="m", status_column="embedding")
    # A value of the wrong type is the row's problem, not the configuration's.
    rows = to_stage_rows(pa.table({"body": pa.array([1, 2], pa.int64())}), columns).to_pylist()
    assert [(row["status"], row["code"]) for row in rows] == [("error", "invalid_input")] * 2


def png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 32), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_vl_image_column(ray_cluster, tiny_vl_model_dir, tiny_vl_embedder, tmp_path):
    import ray

    red, blue = png((255, 0, 0)), png((0, 0, 255))
    (tmp_path / "blue.png").write_bytes(blue)
    (tmp_path / "red.png").write_bytes(red)
    # One type per column (Arrow holds no mix of bytes and strings): paths and a data URI.
    items = [
        {"n": 0, "caption": "a red square", "picture": str(tmp_path / "red.png")},
        {"n": 1, "caption": None, "picture": str(tmp_path / "blue.png")},
        {"n": 2, "caption": "no picture", "picture": None},
        {"n": 3, "caption": "broken", "picture": "data:image/png;base64,bm90IGFuIGltYWdl"},
    ]
    config = EmbedStageConfig(
        model=str(tiny_vl_model_dir), text_column="caption", image_column="picture", batch_rows=2
    )
    rows = sorted(
        embed_dataset(ray.data.from_items(items), config).take_all(), key=lambda r: r["n"]
    )
    assert [row["n"] for row in rows] == [0, 1, 2, 3]
    statuses = [(row["embedding_status"], row["embedding_error"]) for row in rows]
    assert [status for status, _ in statuses] == ["ok", "ok", "ok", "error"], statuses
    assert rows[3]["embedding"] is None and rows[3]["embedding_error"]
    reference = tiny_vl_embedder.embed(
        [{"text": "a red square", "image": red}, {"image": blue}, {"text": "no picture"}]
    ).embeddings.numpy()
    got = np.array([row["embedding"] for row in rows[:3]], dtype=np.float32)
    assert np.abs(got - reference).max() <= 1e-5
