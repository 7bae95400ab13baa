"""The sink (pipelines/sink.py) without Ray: each row written once, stale writers stopped."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.resume import scan_output
from pipelines.storage import resolve


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
