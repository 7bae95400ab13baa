"""Benchmark 6: bytes per row of the batch job's blocks at each stage (what Ray's object store
holds for a row in flight), for text.

`python -m benchmarks.row_bytes [--quick]` (or `python -m benchmarks.run --only rowbytes`).

The job's own functions on the benchmark corpus (log-normal lengths): the read task's blocks
(`readers.read_file` + `fragments.tag_rows`), the prepare stage's (`stages.prepare_batch`, the
tiny random checkpoint's tokenizer: token counts are that tokenizer's, bytes per token are the
figure that carries over), and the embed stage's blocks at the given widths (built in the
stage's schema: a vector per row is `4 x dim` bytes whatever the model). Sizes are Arrow's
`Table.nbytes`, which is what a block occupies in the object store (plus a small header).
VL rows are not measured here: a prepared image is its resized uint8 pixels (see docs/batch-job.md).

Output bytes per row for each `--precision` (`output_precision_bytes`): OUTPUT's part files as
the job's sink writes them (its `output_schema`, the core's `quantize` on unit vectors drawn at
random, ids and token counts of the corpus rows), both as Arrow's `nbytes` and as a parquet file
written with the sink's `pq.write_table` defaults; the vectors' own share is
`qwen3_embed.precision.bytes_per_vector`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

DIMS = (1024, 2560, 4096)  # Qwen3-Embedding 0.6B / 4B / 8B full widths


def measure(texts: list[str], model_dir: Path, folder: Path) -> dict[str, Any]:
    from pipelines.discovery import discover
    from pipelines.fragments import tag_rows
    from pipelines.readers import ReadSpec, read_file
    from pipelines.rows import embedded_schema
    from pipelines.stages import PrepareSettings, prepare_batch
    from qwen3_embed.options import LoadOptions

    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    inputs = discover((str(corpus),))
    spec = ReadSpec(id_column=None, text_column="text", image_column=None, block_rows=1024)
    read = pa.concat_tables(
        tag_rows(read_file(inputs.files[0], inputs.fs, inputs.prefix, spec), "0" * 32)
    )
    prepared = prepare_batch(
        read, PrepareSettings(LoadOptions(model=str(model_dir)), instruction=None, truncate=True)
    )
    rows = read.num_rows
    tokens = int(np.nansum(prepared.column("num_tokens").to_numpy(zero_copy_only=False)))
    result: dict[str, Any] = {
        "rows": rows,
        "tokens": tokens,
        "text_bytes_per_row": sum(len(text.encode()) for text in texts) / rows,
        "read_block_bytes_per_row": read.nbytes / rows,
        "prepared_block_bytes_per_row": prepared.nbytes / rows,
        "prepared_block_bytes_per_token": prepared.nbytes / max(tokens, 1),
        "embedded_block_bytes_per_row": {},
    }
    ids = read.column("id")
    for dim in DIMS:
        embedded = pa.table(
            {
                "id": ids,
                "status": pa.array(["ok"] * rows),
                "error": pa.nulls(rows, pa.string()),
                "code": pa.nulls(rows, pa.string()),
                "num_tokens": prepared.column("num_tokens"),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(np.zeros(rows * dim, np.float32)), dim
                ),
            },
            schema=embedded_schema(dim),
        )
        embedded = embedded.append_column(read.field("fragment"), read.column("fragment"))
        embedded = embedded.append_column(read.field("fragment_rows"), read.column("fragment_rows"))
        result["embedded_block_bytes_per_row"][str(dim)] = embedded.nbytes / rows
    result["output_precision_bytes"] = output_precision_bytes(
        ids, prepared.column("num_tokens").fill_null(0)
    )
    return result


def output_precision_bytes(ids: pa.Array, num_tokens: pa.Array) -> dict[str, dict[str, Any]]:
    """{precision: {dim: {vector, arrow, parquet}}} bytes per row of an OUTPUT part file."""
    import io

    import pyarrow.parquet as pq

    from pipelines.rows import output_schema
    from qwen3_embed.precision import PRECISIONS, bytes_per_vector, calibration_ranges, quantize

    rows = len(ids)
    measured: dict[str, dict[str, Any]] = {}
    for precision in PRECISIONS:
        measured[precision] = {}
        for dim in DIMS:
            vectors = np.random.default_rng(dim).standard_normal((rows, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            ranges = calibration_ranges(vectors) if precision in ("int8", "uint8") else None
            values = quantize(vectors, precision, ranges)
            schema = output_schema(dim, {"precision": precision}, precision)
            part = pa.Table.from_arrays(
                [
                    ids,
                    pa.FixedSizeListArray.from_arrays(
                        pa.array(values.reshape(-1)), values.shape[1]
                    ),
                    num_tokens,
                ],
                schema=schema,
            )
            buffer = io.BytesIO()
            pq.write_table(part, buffer)
            measured[precision][str(dim)] = {
                "vector": bytes_per_vector(precision, dim),
                "arrow": part.nbytes / rows,
                "parquet": buffer.tell() / rows,
            }
    return measured


def run(device: Any = None, quick: bool = False) -> dict[str, Any]:
    """`benchmarks.run`'s entry point (`device` is unused: no forward pass runs)."""
    from .common import corpus_texts, row
    from .core_vs_st import QUICK_SHAPE, build_model

    texts = corpus_texts(quick, 64 if quick else 2000)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_dir = build_model(QUICK_SHAPE, folder / "model")  # its tokenizer only
        measured = measure(texts, model_dir, folder)
    per_row = measured["embedded_block_bytes_per_row"]
    return {
        "benchmark": "row_bytes",
        "measured": measured,
        "rows": [
            row(
                f"text block bytes per row ({measured['rows']:,} rows, "
                f"{measured['tokens'] / measured['rows']:.0f} tokens a row)",
                f"read {measured['read_block_bytes_per_row']:.0f} B, prepared "
                f"{measured['prepared_block_bytes_per_row']:.0f} B "
                f"({measured['prepared_block_bytes_per_token']:.1f} B/token), embedded "
                + ", ".join(f"{value:,.0f} B (dim {dim})" for dim, value in per_row.items()),
                "n/a (measured)",
                None,
            ),
            *(
                row(
                    f"OUTPUT bytes per row, --precision {precision}",
                    ", ".join(
                        f"{values['parquet']:,.0f} B parquet / {values['vector']:,} B vector "
                        f"(dim {dim})"
                        for dim, values in measured["output_precision_bytes"][precision].items()
                    ),
                    "n/a (measured)",
                    None,
                )
                for precision in measured["output_precision_bytes"]
            ),
        ],
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
