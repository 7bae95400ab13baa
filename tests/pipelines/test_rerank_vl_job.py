"""VL pairs in the rerank batch job and `rerank_dataset` (tiny Qwen3-VL reranker): query and
document cells that are items (JSON objects / structs with text, image, video) score exactly as
the core scores the same items; relative references resolve against the table's folder; a
missing or undecodable image is an `_errors/` row beside the scored pairs; a rerun resumes; a
text reranker refuses an image pair alone; an input column named `path` is refused up front."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipelines.rerank_cells import cell_value, table_folder
from pipelines.rerank_stage import rank_scores

pytestmark = pytest.mark.requires_vl

TOL = 1e-5


def png(color: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A table folder: imgs/red.png, imgs/blue.png, imgs/corrupt.png (not an image) and a
    2-second clip of 4 frames, clips/clip.mp4."""
    from media_support import smooth_clip, write_mp4

    folder = tmp_path_factory.mktemp("vl-rerank")
    (folder / "imgs").mkdir()
    (folder / "clips").mkdir()
    (folder / "imgs" / "red.png").write_bytes(png((220, 30, 30)))
    (folder / "imgs" / "blue.png").write_bytes(png((20, 40, 200)))
    (folder / "imgs" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is no image")
    write_mp4(folder / "clips" / "clip.mp4", smooth_clip(4), fps=2)
    return folder


def _absolute(item: dict | str, folder: Path) -> dict | str:
    """The core's item for a cell as the table writes it (relative paths joined to `folder`)."""
    if isinstance(item, str):
        return item
    out = dict(item)
    for key in ("image", "video"):
        if isinstance(out.get(key), list):
            out[key] = [v if isinstance(v, bytes) else str(folder / v) for v in out[key]]
        elif out.get(key) is not None:
            out[key] = str(folder / out[key])
    return out


def _read(folder: Path) -> list[dict]:
    return pads.dataset(str(folder), format="parquet").to_table().to_pylist()


def _job(corpus: Path, output: Path, model: Path, **fields):
    from pipelines.rerank_config import RerankJobConfig
    from pipelines.rerank_job import run_rerank_job

    config = RerankJobConfig(
        input=(str(corpus),), output=str(output), model=str(model), progress=False, **fields
    )
    return run_rerank_job(config)


# ------------------------------------------------------------------------------ cells
def test_cells_are_texts_or_canonical_items():
    assert cell_value("a text", "/t") == ("a text", False)
    # An item holding only text IS that text (same string, so the same derived id and score).
    assert cell_value({"text": "a text", "image": None, "video": None}, "/t") == ("a text", False)
    value, is_item = cell_value(
        {"video": None, "image": ["a.png", "/abs/b.png"], "text": "x"}, "/t"
    )
    assert is_item and json.loads(value) == {"image": ["/t/a.png", "/abs/b.png"], "text": "x"}
    # Canonical: key order, null keys and the int/float spelling of fps do not change it.
    same, _ = cell_value({"text": "x", "image": ["../t/a.png", "/abs/b.png"], "fps": None}, "/t")
    assert same == value
    assert cell_value({"video": "c.mp4", "fps": 2}, "/t") == cell_value(
        {"fps": 2.0, "video": "/t/c.mp4"}, None
    )
    # Remote folders keep their scheme; URLs and data URIs are never joined.
    folder = table_folder("s3://", "bucket/tables/part.jsonl")
    assert folder == "s3://bucket/tables"
    remote, _ = cell_value(
        {"image": ["a.png", "https://h/x.png", "data:image/png;base64,AA=="]}, folder
    )
    assert json.loads(remote)["image"] == [
        "s3://bucket/tables/a.png",
        "https://h/x.png",
        "data:image/png;base64,AA==",
    ]
    # Bytes (a parquet binary) become a data URI that names the image type.
    data, _ = cell_value({"image": png((1, 2, 3))}, None)
    assert json.loads(data)["image"].startswith("data:image/png;base64,")
    # A text that looks like JSON stays a text: the flag says what a cell is, never its content.
    assert cell_value('{"image": "a.png"}', "/t") == ('{"image": "a.png"}', False)
    assert cell_value(None, "/t") == (None, False)


def test_remote_references_are_fetched_in_the_replica(s3, tiny_vl_reranker):
    """s3:// references (a table's relative path, resolved against its s3:// folder) are fetched
    with the job's storage options; a missing object fails its pair alone (`read_error`), and a
    query whose image is missing fails every pair of its group."""
    from pipelines.rerank_stage import RerankSettings, score_groups
    from pipelines.rows import GROUP_SCHEMA
    from qwen3_embed.options import LoadOptions

    client, options = s3
    red = png((220, 30, 30))
    client.put_object(Bucket="corpus", Key="tables/imgs/red.png", Body=red)
    folder = table_folder("s3://", "corpus/tables/part.jsonl")
    cells = [
        cell_value({"image": ["imgs/red.png"]}, folder),
        cell_value({"image": ["imgs/gone.png"]}, folder),
        cell_value("a text", folder),
    ]
    missing_query, _ = cell_value({"image": ["imgs/gone.png"], "text": "q"}, folder)
    groups = pa.Table.from_pylist(
        [
            {"id": "q", "query": "red?", "query_item": False, "document_ids": ["a", "b", "c"],
             "documents": [c for c, _ in cells], "document_items": [i for _, i in cells],
             "status": "ok", "num_pairs": 3},
            {"id": "q2", "query": missing_query, "query_item": True, "document_ids": ["x"],
             "documents": ["text"], "status": "ok", "num_pairs": 1},
        ],
        schema=GROUP_SCHEMA,
    )  # fmt: skip
    settings = RerankSettings(
        LoadOptions(model="unused"), None, True, None, None, tuple(options.items())
    )
    first, second = score_groups(groups, tiny_vl_reranker, settings).to_pylist()
    expected = tiny_vl_reranker.score_pairs([("red?", {"image": [red]}), ("red?", "a text")])
    assert first["codes"] == [None, "read_error", None], first
    assert "document: cannot read media" in first["errors"][1]
    assert abs(first["scores"][0] - expected[0]) <= TOL
    assert abs(first["scores"][2] - expected[1]) <= TOL
    assert second["status"] == "error" and second["codes"] == ["read_error"], second
    assert second["errors"][0].startswith("query: cannot read media")


# --------------------------------------------------------------------------- the job
PAIRS_QUERIES = {
    "text": {"text": "which picture is red?"},  # a text query, written as an object
    "image": {"image": ["imgs/blue.png"], "text": "find this"},
}
PAIRS_DOCUMENTS = {
    "text": [
        {"image": ["imgs/red.png"]},
        {"image": ["imgs/red.png", "imgs/blue.png"]},
        {"video": "clips/clip.mp4", "fps": 2.0, "max_frames": 4},
        {"text": "a red square"},
        {"image": ["imgs/missing.png"]},
        {"image": ["imgs/corrupt.png"]},
    ],
    "image": [{"text": "a blue square"}, {"image": ["imgs/red.png"], "text": "red"}],
}
BAD = {"imgs/missing.png": "read_error", "imgs/corrupt.png": "invalid_input"}


def _bad(document: dict) -> str | None:
    return next((code for path, code in BAD.items() if path in document.get("image", [])), None)


@pytest.mark.slow
def test_pairs_and_list_jobs_score_as_the_core(
    ray_cluster, tiny_vl_reranker_dir, tiny_vl_reranker, media, tmp_path
):
    corpus = media / "pairs.jsonl"
    with corpus.open("w") as handle:
        for q, query in PAIRS_QUERIES.items():
            for d, document in enumerate(PAIRS_DOCUMENTS[q]):
                row = {"query": query, "document": document, "document_id": f"{q}-{d}"}
                handle.write(json.dumps(row) + "\n")
    output = tmp_path / "pairs-out"
    manifest = _job(corpus, output, tiny_vl_reranker_dir)
    assert manifest["consistent"] and manifest["status"] == "complete", manifest
    scored = {row["document_id"]: row for row in _read(output)}
    errors = {row["document_id"]: row for row in _read(output / "_errors")}
    for q, query in PAIRS_QUERIES.items():
        documents = PAIRS_DOCUMENTS[q]
        good = [d for d, document in enumerate(documents) if _bad(document) is None]
        core_query = query["text"] if set(query) == {"text"} else _absolute(query, media)
        expected = tiny_vl_reranker.score_pairs(
            [(core_query, _absolute(documents[d], media)) for d in good]
        )
        ranks = rank_scores(expected)
        for d, score, rank in zip(good, expected, ranks, strict=True):
            row = scored[f"{q}-{d}"]
            assert abs(row["score"] - score) <= TOL, (q, d, row["score"], score)
            assert row["rank"] == rank
        for d, document in enumerate(documents):
            if _bad(document) is not None:
                error = errors[f"{q}-{d}"]
                assert error["code"] == _bad(document) and not error["query_failed"], error
                assert f"{q}-{d}" not in scored
    assert len(scored) == 6 and len(errors) == 2
    assert manifest["error_codes"] == {"invalid_input": 1, "read_error": 1}, manifest
    parts = sorted(p.name for p in output.glob("part-*.parquet"))

    # A rerun of the finished job is a no-op: every query skipped, OUTPUT as it was.
    again = _job(corpus, output, tiny_vl_reranker_dir)
    assert again["consistent"] and again["this_run"]["queries_skipped"] == 2, again
    assert sorted(p.name for p in output.glob("part-*.parquet")) == parts
    assert {row["document_id"]: row["score"] for row in _read(output)} == {
        d: row["score"] for d, row in scored.items()
    }

    # The list form from parquet: a query and its candidates (a list of structs) per row, best
    # 2 kept; images as bytes (a binary field), the video a path relative to the parquet file.
    red, blue = (
        (media / "imgs" / "red.png").read_bytes(),
        (media / "imgs" / "blue.png").read_bytes(),
    )
    hits = [
        {"text": "a red square"},
        {"image": [red]},
        {"video": "clips/clip.mp4", "max_frames": 4},
        {"image": [blue, red], "text": "two"},
    ]
    rows = [
        {"qid": "t", "query": {"text": "which is red?"}, "hits": hits},
        {"qid": "i", "query": {"image": [red]}, "hits": hits[:2]},
    ]
    listed = media / "lists.parquet"
    pq.write_table(pa.Table.from_pylist(rows), listed)
    top = tmp_path / "list-out"
    manifest = _job(
        listed, top, tiny_vl_reranker_dir, document_column="hits", query_id_column="qid", top_n=2
    )
    assert manifest["consistent"] and manifest["rows_failed"] == 0, manifest
    assert manifest["this_run"]["pairs_dropped_by_top_n"] == 2
    written = _read(top)
    for row in rows:
        query = row["query"]
        core_query = query["text"] if set(query) == {"text"} else query
        expected = tiny_vl_reranker.score(core_query, [_absolute(h, media) for h in row["hits"]])
        best = np.argsort(-expected, kind="stable")[:2]
        mine = sorted((r for r in written if r["query_id"] == row["qid"]), key=lambda r: r["rank"])
        assert [int(r["document_id"]) for r in mine] == best.tolist()
        for r in mine:
            assert abs(r["score"] - expected[int(r["document_id"])]) <= TOL


@pytest.mark.slow
def test_a_text_reranker_refuses_an_image_pair_alone(
    ray_cluster, tiny_text_reranker_dir, tiny_text_reranker, media, tmp_path
):
    corpus = media / "text-model.jsonl"
    documents = [{"text": "a red square"}, {"image": ["imgs/red.png"]}, {"text": "blue sky"}]
    corpus.write_text(
        "".join(
            json.dumps({"query": "red?", "document": d, "document_id": f"d{n}"}) + "\n"
            for n, d in enumerate(documents)
        )
    )
    output = tmp_path / "out"
    manifest = _job(corpus, output, tiny_text_reranker_dir)
    assert manifest["consistent"], manifest
    expected = tiny_text_reranker.score("red?", ["a red square", "blue sky"])
    scored = {row["document_id"]: row["score"] for row in _read(output)}
    assert scored.keys() == {"d0", "d2"}
    assert abs(scored["d0"] - expected[0]) <= TOL and abs(scored["d2"] - expected[1]) <= TOL
    [error] = _read(output / "_errors")
    assert error["document_id"] == "d1" and error["code"] == "invalid_input"
    assert "text reranker" in error["error"] and "image" in error["error"], error


@pytest.mark.slow
def test_rerank_dataset_takes_struct_cells(
    ray_cluster, tiny_vl_reranker_dir, tiny_vl_reranker, media
):
    import ray

    from pipelines import RerankStageConfig, rerank_dataset

    red, blue = str(media / "imgs" / "red.png"), str(media / "imgs" / "blue.png")
    clip = str(media / "clips" / "clip.mp4")

    # One struct type for every cell (as a parquet column of items would be).
    def item(text=None, image=None, video=None):
        return {"text": text, "image": image, "video": video}

    candidates = [item(text="a red square"), item(image=[red]), item(video=clip),
                  item(image=[blue, red], text="two"), item(image=["imgs/red.png"])]  # fmt: skip
    rows = [
        {"query": item(text="which is red?"), "documents": candidates, "n": 0},
        {"query": item(image=[blue]), "documents": candidates[:2], "n": 1},
    ]
    config = RerankStageConfig(model=str(tiny_vl_reranker_dir), top_n=2, cpus_per_replica=1.0)
    out = sorted(rerank_dataset(ray.data.from_items(rows), config).take_all(), key=lambda r: r["n"])

    def core(cell):
        kept = {k: v for k, v in cell.items() if v is not None}
        return kept["text"] if set(kept) == {"text"} else kept

    for row, given in zip(out, rows, strict=True):
        good = [c for c in given["documents"] if "imgs/red.png" not in (c["image"] or [])]
        expected = tiny_vl_reranker.score(core(given["query"]), [core(c) for c in good])
        assert np.max(np.abs(np.array(row["rerank_score"][: len(good)]) - expected)) <= TOL
    # A relative path has no table folder to resolve against: that candidate alone fails.
    assert out[0]["rerank_score"][4] is None
    assert "candidate 4" in out[0]["rerank_error"] and "relative path" in out[0]["rerank_error"]
    assert out[1]["rerank_error"] is None


def test_an_input_column_named_path_is_refused_before_ray(tiny_vl_reranker_dir, media, tmp_path):
    corpus = tmp_path / "clash.jsonl"
    corpus.write_text(
        json.dumps({"query": "q", "document": {"image": ["imgs/red.png"]}, "path": "x"}) + "\n"
    )
    command = [sys.executable, "-m", "qwen3_embed", "rerank", str(corpus), str(tmp_path / "out"),
               "--model", str(tiny_vl_reranker_dir), "--no-progress"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "'path'" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()
