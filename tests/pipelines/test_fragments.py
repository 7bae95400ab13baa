"""Resume by input fragment (pipelines.fragments) without a Ray cluster: the read side tags rows,
the real sink writes part files with their footer records, and the rerun's scan decides which
fragments it drops whole and which part files it still reads by id."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import resume as resume_module
from pipelines.datasource import CorpusDatasource
from pipelines.discovery import discover
from pipelines.fragments import (
    PROVENANCE_KEY,
    fragment_key,
    parse_provenance,
    read_groups,
    tag_rows,
)
from pipelines.readers import ReadSpec, read_file
from pipelines.resume import DoneSet, mark_skipped, scan_for_resume, scan_output
from pipelines.rows import (
    FRAGMENT_COLUMN,
    FRAGMENT_ROWS_COLUMN,
    PREPARED_SCHEMA,
    READ_SCHEMA,
    STATUS_SKIPPED,
    embedded_schema,
)
from pipelines.sink import EmbeddingSink, SinkSettings
from pipelines.stages import _failed_rows, with_passthrough
from pipelines.storage import resolve

SPEC = ReadSpec(id_column=None, text_column="text", image_column=None, block_rows=4)
READ_CONFIG = {"root": "r", "id_column": None, "text_column": "text", "image_column": None}
DIM = 4


def corpus(root: Path, sizes: dict[str, int]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, count in sizes.items():
        lines = [json.dumps({"text": f"{name} row {n}"}) for n in range(count)]
        if name == "bad.jsonl":
            lines[1] = "{not json"  # an error row: it counts towards its fragment too
        (root / name).write_text("\n".join(lines) + "\n")


def read_rows(root: Path, done: DoneSet | None = None) -> dict[str, pa.Table]:
    """{relpath: that fragment's rows as the job's read task hands them on}."""
    inputs = discover((str(root),))
    out = {}
    for group in read_groups(inputs):
        key = fragment_key(group, READ_CONFIG)
        tables = tag_rows(read_file(group[0], inputs.fs, inputs.prefix, SPEC), key)
        out[group[0].relpath] = pa.concat_tables(mark_skipped(table, done) for table in tables)
    return out


def embedded(rows: pa.Table) -> pa.Table:
    """What the embed stage hands the sink: rows in its schema, provenance carried."""
    count = rows.num_rows
    ok = np.array([status == "ok" for status in rows.column("status").to_pylist()])
    table = pa.table(
        {
            "id": rows.column("id"),
            "status": rows.column("status"),
            "error": rows.column("error"),
            "code": rows.column("code"),
            "num_tokens": pa.array([3 if flag else None for flag in ok], pa.int32()),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ones(count * DIM, np.float32)), DIM, mask=pa.array(~ok)
            ),
        },
        schema=embedded_schema(DIM),
    )
    return with_passthrough(table, rows)


@pytest.fixture()
def sink(tmp_path) -> EmbeddingSink:
    out = tmp_path / "out"
    out.mkdir()
    (out / "_manifest.json").write_text(json.dumps({"run_id": "run-1"}))
    return EmbeddingSink(
        SinkSettings(str(out), (), DIM, (("model", "m"), ("dim", "4")), 3, "run-1")
    )


def ids_in(output) -> list[str]:
    return [
        row_id
        for path in Path(output.path).glob("part-*.parquet")
        for row_id in pq.read_table(path).column("id").to_pylist()
    ]


def wanted(root: Path) -> list[str]:
    inputs = discover((str(root),))
    return [fragment_key(group, READ_CONFIG) for group in read_groups(inputs)]


def test_rows_carry_their_fragment_and_the_last_row_its_total(tmp_path):
    corpus(tmp_path / "in", {"a.jsonl": 6})
    rows = read_rows(tmp_path / "in")["a.jsonl"]
    assert len(set(rows.column(FRAGMENT_COLUMN).to_pylist())) == 1
    assert rows.column(FRAGMENT_ROWS_COLUMN).to_pylist() == [None] * 5 + [6]
    # Rows become error rows in a stage (here: every row fails): provenance travels on.
    failed = _failed_rows(rows, PREPARED_SCHEMA, "broken", "prepare_failed")
    assert set(failed.column("status").to_pylist()) == {"error"}
    assert failed.column(FRAGMENT_ROWS_COLUMN).to_pylist()[-1] == 6


def test_unreadable_file_gets_no_total():
    table = pa.table(
        {
            **{name: [None] for name in READ_SCHEMA.names},
            "id": ["f.jsonl"],
            "status": ["error"],
            "code": ["unreadable_file"],
        },
        schema=READ_SCHEMA,
    )
    tagged = list(tag_rows([table], "k"))[0]
    assert tagged.column(FRAGMENT_ROWS_COLUMN).to_pylist() == [None]


def test_fragment_fully_done_is_skipped_without_reading_its_ids(tmp_path, sink, monkeypatch):
    corpus(tmp_path / "in", {"a.jsonl": 7, "bad.jsonl": 5, "c.jsonl": 4})
    first = read_rows(tmp_path / "in")
    # The first run stopped with a.jsonl and bad.jsonl committed and two rows of c.jsonl.
    sink.write([embedded(first["a.jsonl"]), embedded(first["bad.jsonl"])], ctx=None)
    sink.write([embedded(first["c.jsonl"].slice(0, 2))], ctx=None)
    output = resolve(sink.settings.output)
    records = [
        parse_provenance(pq.read_metadata(path).metadata)
        for path in sorted(Path(output.path).rglob("part-*.parquet"))
    ]
    assert all(record is not None for record in records)

    read_by_id: list[str] = []
    real_read_table = resume_module.pq.read_table

    def recording(path, *args, **kwargs):
        read_by_id.append(path)
        return real_read_table(path, *args, **kwargs)

    monkeypatch.setattr(resume_module.pq, "read_table", recording)
    keys = wanted(tmp_path / "in")
    digests, scan = scan_for_resume(output, keys)
    key_a, key_bad, key_c = keys
    assert scan.done_fragments == {key_a: 7, key_bad: 5}
    assert (scan.rows_embedded, scan.rows_failed) == (13, 1)
    # Only the one file holding c.jsonl's rows was read by id; its ids are the skip set.
    assert len(read_by_id) == 1 and scan.files_read_by_id == 1 and scan.ids_read == 2
    assert sorted(DoneSet(digests).contains([f"c.jsonl:{n}" for n in range(4)]).tolist()) == [
        False,
        False,
        True,
        True,
    ]

    # The read stage makes no task for the done fragments and counts their rows as skipped.
    inputs = discover((str(tmp_path / "in"),))
    source = CorpusDatasource(inputs, SPEC, None, READ_CONFIG, scan.done_fragments)
    tasks = source.get_read_tasks(1)
    assert len(tasks) == 1 and source.skipped_rows == 12
    assert list(tasks[0].metadata.input_files) == [str(tmp_path / "in" / "c.jsonl")]


def test_partially_done_fragment_is_checked_by_id_and_then_done(tmp_path, sink):
    corpus(tmp_path / "in", {"c.jsonl": 8})
    rows = read_rows(tmp_path / "in")["c.jsonl"]
    # Parts complete out of order: the one holding the last row (and so the total) is in
    # OUTPUT, a middle one is not.
    sink.write([embedded(rows.slice(0, 3))], ctx=None)
    sink.write([embedded(rows.slice(6, 2))], ctx=None)
    output = resolve(sink.settings.output)
    keys = wanted(tmp_path / "in")
    digests, scan = scan_for_resume(output, keys)
    assert scan.done_fragments == {} and scan.ids_read == 5

    rerun = read_rows(tmp_path / "in", DoneSet(digests))["c.jsonl"]
    statuses = rerun.column("status").to_pylist()
    assert statuses == [STATUS_SKIPPED] * 3 + ["ok"] * 3 + [STATUS_SKIPPED] * 2
    counts = sink.write([embedded(rerun)], ctx=None)
    assert (counts["embedded"], counts["skipped"]) == (3, 5)

    digests, scan = scan_for_resume(output, keys)
    assert scan.done_fragments == {keys[0]: 8} and scan.ids_read == 0 and not len(digests)
    ids = ids_in(output)
    assert len(ids) == len(set(ids)) == 8  # nothing written twice


def test_files_without_a_record_are_checked_by_id(tmp_path, sink):
    # Part files from before fragment records, or rows that lost their provenance: their ids
    # are read, so their rows are skipped, whichever fragment they belong to.
    corpus(tmp_path / "in", {"a.jsonl": 5})
    rows = read_rows(tmp_path / "in")["a.jsonl"]
    untracked = rows.drop_columns([FRAGMENT_COLUMN, FRAGMENT_ROWS_COLUMN])
    sink.write([embedded(untracked)], ctx=None)
    output = resolve(sink.settings.output)
    for path in Path(output.path).glob("part-*.parquet"):
        assert PROVENANCE_KEY not in (pq.read_metadata(path).metadata or {})
    digests, scan = scan_for_resume(output, wanted(tmp_path / "in"))
    assert scan.done_fragments == {} and scan.ids_read == 5
    rerun = read_rows(tmp_path / "in", DoneSet(digests))["a.jsonl"]
    assert set(rerun.column("status").to_pylist()) == {STATUS_SKIPPED}
    # The old full scan and this one agree on what OUTPUT holds.
    old, _ = scan_output(output)
    assert np.array_equal(old, digests)


def test_crash_between_part_write_and_record_reembeds_nothing(tmp_path, sink, monkeypatch):
    # The record is the part file's own footer: a write that dies leaves neither (see
    # storage.write_atomically), and a rerun redoes exactly the rows of the lost file.
    corpus(tmp_path / "in", {"a.jsonl": 6})
    rows = read_rows(tmp_path / "in")["a.jsonl"]
    sink.write([embedded(rows.slice(0, 3))], ctx=None)
    output = resolve(sink.settings.output)
    real_write = pq.write_table

    def dying(table, where, **kwargs):
        real_write(table.slice(0, 1), where, **kwargs)  # part of the file, then the crash
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr("pipelines.sink.pq.write_table", dying)
    with pytest.raises(KeyboardInterrupt):
        sink.write([embedded(rows.slice(3, 3))], ctx=None)
    monkeypatch.setattr("pipelines.sink.pq.write_table", real_write)
    assert len(list(Path(output.path).glob("part-*.parquet"))) == 1

    digests, scan = scan_for_resume(output, wanted(tmp_path / "in"))
    assert scan.done_fragments == {}
    rerun = read_rows(tmp_path / "in", DoneSet(digests))["a.jsonl"]
    assert rerun.column("status").to_pylist() == [STATUS_SKIPPED] * 3 + ["ok"] * 3
    sink.write([embedded(rerun)], ctx=None)
    assert sorted(ids_in(output)) == sorted(f"a.jsonl:{n}" for n in range(6))


def test_changed_input_file_is_a_new_fragment_checked_by_id(tmp_path, sink):
    corpus(tmp_path / "in", {"a.jsonl": 4})
    rows = read_rows(tmp_path / "in")["a.jsonl"]
    sink.write([embedded(rows)], ctx=None)
    output = resolve(sink.settings.output)
    old_key = wanted(tmp_path / "in")[0]
    assert scan_for_resume(output, [old_key])[1].done_fragments == {old_key: 4}
    # Same path, new content and time: the old rows are not this fragment's, so the part
    # holding them is read by id and rows whose ids are in OUTPUT are skipped, as before.
    path = tmp_path / "in" / "a.jsonl"
    path.write_text(path.read_text() + json.dumps({"text": "one more"}) + "\n")
    os.utime(path, ns=(1, 1))
    new_key = wanted(tmp_path / "in")[0]
    assert new_key != old_key
    digests, scan = scan_for_resume(output, [new_key])
    assert scan.done_fragments == {} and scan.ids_read == 4
    rerun = read_rows(tmp_path / "in", DoneSet(digests))["a.jsonl"]
    assert rerun.column("status").to_pylist() == [STATUS_SKIPPED] * 4 + ["ok"]


def test_untracked_fragment_is_never_done(tmp_path, sink):
    # No modification time (some HTTP servers): no key, rows counted as untracked.
    corpus(tmp_path / "in", {"a.jsonl": 3})
    inputs = discover((str(tmp_path / "in"),))
    group = read_groups(inputs)[0]
    assert fragment_key([_without_mtime(group[0])], READ_CONFIG) is None
    rows = pa.concat_tables(tag_rows(read_file(group[0], inputs.fs, "", SPEC), None))
    sink.write([embedded(rows)], ctx=None)
    digests, scan = scan_for_resume(resolve(sink.settings.output), wanted(tmp_path / "in"))
    assert scan.done_fragments == {} and scan.ids_read == 3


def _without_mtime(file):
    import dataclasses

    return dataclasses.replace(file, mtime_ns=None)
