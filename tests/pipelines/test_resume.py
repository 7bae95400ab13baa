"""Resume bookkeeping (pipelines/resume.py): rows already done are skipped, the output's
committed files and duplicates counted, another job's output refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.layout import part_name
from pipelines.resume import (
    DoneSet,
    OutputMismatchError,
    check_output,
    id_digests,
    mark_skipped,
    scan_output,
)
from pipelines.rows import ERRORS_SCHEMA, READ_SCHEMA, output_schema
from pipelines.storage import resolve


# ------------------------------------------------------------------------------ resume
def test_done_set_marks_rows_skipped():
    done = DoneSet(np.unique(id_digests(["b", "d"])))
    assert done.contains(["a", "b", "c", "d"]).tolist() == [False, True, False, True]
    table = pa.table(
        {
            **{name: [None, None] for name in READ_SCHEMA.names},
            "id": ["a", "b"],
            "status": ["ok", "error"],
            "error": [None, "x"],
            "code": [None, "c"],
            "text": ["t", None],
            "image": [None, None],
            "image_ref": [None, None],
            "images": [None, None],
        },
        schema=READ_SCHEMA,
    )
    marked = mark_skipped(table, done).to_pylist()
    assert marked[0]["status"] == "ok" and marked[0]["text"] == "t"
    assert marked[1] == {
        **{name: None for name in READ_SCHEMA.names},
        "id": "b",
        "status": "skipped",
        "error": None,
        "code": None,
        "text": None,
        "image": None,
        "image_ref": None,
        "images": None,
    }


def write_part(folder: Path, ids: list[str], dim: int = 4, metadata: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    schema = output_schema(
        dim, metadata or {"model": "m", "dim": str(dim), "instruction": "", "normalized": "true"}
    )
    table = pa.Table.from_arrays(
        [
            pa.array(ids),
            pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(len(ids) * dim, np.float32)), dim),
            pa.array([3] * len(ids), pa.int32()),
        ],
        schema=schema,
    )
    pq.write_table(table, folder / part_name(ids))


def test_scan_counts_committed_files_and_duplicates(tmp_path):
    write_part(tmp_path, ["a", "b"])
    write_part(tmp_path, ["c", "a"])
    errors = pa.Table.from_arrays(
        [pa.array(["e"]), pa.array(["bad"]), pa.array(["invalid_input"])], schema=ERRORS_SCHEMA
    )
    (tmp_path / "_errors").mkdir()
    pq.write_table(errors, tmp_path / "_errors" / part_name(["e"]))
    (tmp_path / "_tmp").mkdir()
    pq.write_table(errors, tmp_path / "_tmp" / "part-half-written.parquet")  # never counted
    digests, scan = scan_output(resolve(str(tmp_path)))
    assert (scan.rows_embedded, scan.rows_failed, scan.tokens, scan.duplicate_ids) == (4, 1, 12, 1)
    assert scan.error_codes == {"invalid_input": 1}
    assert DoneSet(digests).contains(["a", "b", "c", "e", "f"]).tolist() == [
        True,
        True,
        True,
        True,
        False,
    ]


def test_check_output_refuses_other_jobs(tmp_path):
    identity = {"model": "m", "dim": 4, "instruction": None, "normalized": True}
    assert check_output(resolve(str(tmp_path / "new")), identity) is None
    write_part(tmp_path / "out", ["a"])
    assert (
        check_output(resolve(str(tmp_path / "out")), identity) is None
    )  # same job, known from the file metadata
    with pytest.raises(OutputMismatchError, match=r"dim 4 \(this job: 8\)"):
        check_output(resolve(str(tmp_path / "out")), {**identity, "dim": 8})
    (tmp_path / "out" / "_manifest.json").write_text(
        json.dumps({"identity": {**identity, "model": "other"}})
    )
    with pytest.raises(OutputMismatchError, match=r"model 'other' \(this job: 'm'\)"):
        check_output(resolve(str(tmp_path / "out")), identity)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "data.csv").write_text("x")
    with pytest.raises(OutputMismatchError, match="holds files this job did not write"):
        check_output(resolve(str(tmp_path / "foreign")), identity)
    write_part(tmp_path / "anonymous", ["a"], metadata={"x": "y"})
    with pytest.raises(OutputMismatchError, match="cannot tell which job wrote them"):
        check_output(resolve(str(tmp_path / "anonymous")), identity)
