"""The batch job with the tiny Qwen3-VL checkpoint: a folder of images (one item per file) and a
table of text + image rows (relative paths, bytes, text only), each vector equal to the core's."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipelines import JobConfig, run_embedding_job

pytestmark = pytest.mark.requires_vl


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def outputs(output: Path) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, str]]]:
    table = pads.dataset(str(output), format="parquet").to_table()
    vectors = dict(
        zip(
            table.column("id").to_pylist(),
            np.array(table.column("embedding").to_pylist(), np.float32),
            strict=True,
        )
    )
    errors_table = pads.dataset(str(output / "_errors"), format="parquet").to_table()
    errors = {row["id"]: (row["error"], row["code"]) for row in errors_table.to_pylist()}
    assert len(vectors) == table.num_rows and len(errors) == errors_table.num_rows  # no id twice
    return vectors, errors


def assert_close(vectors: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert sorted(vectors) == sorted(reference)
    for key, expected in reference.items():
        assert np.abs(vectors[key] - expected).max() <= 1e-5, key


def test_image_folder_and_table(ray_cluster, tiny_vl_model_dir, tiny_vl_embedder, tmp_path):
    images = tmp_path / "corpus" / "imgs"
    images.mkdir(parents=True)
    colors = {"red.png": (255, 0, 0), "green.png": (0, 255, 0), "nested/blue.png": (0, 0, 255)}
    for name, color in colors.items():
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        (images / name).write_bytes(png(color))
    (images / "broken.png").write_bytes(b"this is not an image")

    common = dict(model=str(tiny_vl_model_dir), progress=False, rows_per_file=4, batch_rows=4)
    folder_out = tmp_path / "folder-out"
    result = run_embedding_job(JobConfig(input=str(images), output=str(folder_out), **common))
    assert (result.rows_in, result.rows_embedded, result.rows_failed) == (
        4,
        3,
        1,
    ) and result.consistent
    vectors, errors = outputs(folder_out)
    reference = tiny_vl_embedder.embed(
        [{"image": str(images / name)} for name in colors]
    ).embeddings.numpy()
    assert_close(vectors, dict(zip(colors, reference, strict=True)))
    assert list(errors) == ["broken.png"] and errors["broken.png"][0].startswith("image:")

    # A table: relative image paths (resolved against the table's folder), image bytes (the
    # Hugging Face datasets {"bytes", "path"} struct), text-only rows, and rows that must fail.
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "id": ["p0", "p1", "p2", "p3", "p4"],
            "text": ["a red square", "a blue square from bytes", "text only", None, None],
            "image": pa.array(
                [
                    {"bytes": None, "path": "imgs/red.png"},
                    {"bytes": png((0, 0, 255)), "path": None},
                    None,
                    {"bytes": None, "path": "imgs/missing.png"},
                    None,
                ],
                image_type,
            ),
        }
    )
    pq.write_table(table, tmp_path / "corpus" / "pairs.parquet")
    (tmp_path / "corpus" / "more.jsonl").write_text(
        json.dumps({"id": "j0", "text": "green", "image": "imgs/green.png"}) + "\n"
    )
    table_out = tmp_path / "table-out"
    result = run_embedding_job(
        JobConfig(
            input=[
                str(tmp_path / "corpus" / "pairs.parquet"),
                str(tmp_path / "corpus" / "more.jsonl"),
            ],
            output=str(table_out),
            id_column="id",
            **common,
        )
    )
    assert (result.rows_in, result.rows_embedded, result.rows_failed) == (
        6,
        4,
        2,
    ) and result.consistent
    vectors, errors = outputs(table_out)
    items = {
        "p0": {"text": "a red square", "image": str(images / "red.png")},
        "p1": {"text": "a blue square from bytes", "image": png((0, 0, 255))},
        "p2": {"text": "text only"},
        "j0": {"text": "green", "image": str(images / "green.png")},
    }
    reference = tiny_vl_embedder.embed(list(items.values())).embeddings.numpy()
    assert_close(vectors, dict(zip(items, reference, strict=True)))
    assert set(errors) == {"p3", "p4"}
    assert "no such file" in errors["p3"][0] and "empty" in errors["p4"][0]


class FlakyMedia:
    """Loopback HTTP: `/flaky.png` answers 503 twice then the image, `/down.png` always 503,
    `/gone.png` 404, `/reset.png` drops the connection once then answers."""

    def __init__(self, image: bytes):
        import http.server
        import threading

        self.image, self.hits = image, {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                count = outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                if self.path == "/reset.png" and count == 1:
                    self.connection.close()  # no answer at all: a reset for the client
                    return
                status = {
                    "/flaky.png": 503 if count <= 2 else 200,
                    "/down.png": 503,
                    "/gone.png": 404,
                }.get(self.path, 200)
                body = outer.image if status == 200 else b"nope"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_image_lists_per_row_and_fetch_retries(
    ray_cluster, tiny_vl_model_dir, tiny_vl_embedder, tmp_path
):
    """A document's pages in one row (parquet list columns, JSON arrays) embed as one item with
    several images; transient fetch failures are retried, 4xx are final at once."""
    pages = {name: png(color, (40 + 8 * i, 56)) for i, (name, color) in enumerate(
        [("p1.png", (250, 0, 0)), ("p2.png", (0, 250, 0)), ("p3.png", (0, 0, 250))]
    )}  # fmt: skip
    corpus = tmp_path / "docs"
    (corpus / "pages").mkdir(parents=True)
    for name, data in pages.items():
        (corpus / "pages" / name).write_bytes(data)
    server = FlakyMedia(pages["p1.png"])
    try:
        hf_image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        pq.write_table(
            pa.table(
                {
                    "id": ["doc-bytes", "doc-hf", "doc-bad-page", "doc-empty"],
                    "text": ["report", None, None, "empty list"],
                    "image": pa.array(
                        [
                            [{"bytes": pages["p1.png"], "path": None}, {"bytes": pages["p2.png"], "path": None}],
                            [{"bytes": None, "path": "pages/p3.png"}, {"bytes": pages["p1.png"], "path": None}],
                            [{"bytes": pages["p1.png"], "path": None}, {"bytes": b"junk", "path": None}],
                            [],
                        ],
                        pa.list_(hf_image),
                    ),
                }
            ),
            corpus / "docs.parquet",
        )  # fmt: skip
        rows = [
            {"id": "json-doc", "text": "three pages", "image": [f"pages/{n}" for n in pages]},
            {"id": "flaky", "image": [f"{server.url}/flaky.png", "pages/p2.png"]},
            {"id": "reset", "image": f"{server.url}/reset.png"},
            {"id": "down", "image": ["pages/p2.png", f"{server.url}/down.png"]},
            {"id": "gone", "image": f"{server.url}/gone.png"},
        ]
        (corpus / "docs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        output = tmp_path / "out"
        result = run_embedding_job(
            JobConfig(
                input=[str(corpus / "docs.parquet"), str(corpus / "docs.jsonl")],
                output=str(output),
                model=str(tiny_vl_model_dir),
                id_column="id",
                progress=False,
                batch_rows=4,
            )
        )
        assert result.consistent and (result.rows_in, result.rows_embedded) == (9, 5)
        vectors, errors = outputs(output)
        p1, p2, p3 = pages.values()
        items = {
            "doc-bytes": {"text": "report", "image": [p1, p2]},
            "doc-hf": {"image": [p3, p1]},
            "json-doc": {"text": "three pages", "image": [p1, p2, p3]},
            "flaky": {"image": [p1, p2]},
            "reset": {"image": p1},
        }
        reference = tiny_vl_embedder.embed(list(items.values())).embeddings.numpy()
        assert_close(vectors, dict(zip(items, reference, strict=True)))
        assert server.hits["/flaky.png"] == 3 and server.hits["/reset.png"] == 2
        assert errors["doc-bad-page"][0].startswith("image[1]: could not decode")
        assert "image is an empty list" in errors["doc-empty"][0]
        reason, code = errors["down"]
        assert code == "media_unavailable" and "transient failure on all 4 attempts" in reason
        assert server.hits["/down.png"] == 4
        reason, code = errors["gone"]
        assert code == "read_error" and "HTTP Error 404" in reason and "not retried" in reason
        assert server.hits["/gone.png"] == 1
    finally:
        server.close()
