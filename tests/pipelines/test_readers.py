"""The readers (pipelines/readers.py) without Ray: every input line lands somewhere (a row or an
error row), per format (jsonl, csv, txt, parquet)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.discovery import discover
from pipelines.readers import ReadSpec, read_file

SPEC = ReadSpec(id_column=None, text_column="text", image_column=None, block_rows=4)


def rows(tables) -> list[dict]:
    return [row for table in tables for row in table.to_pylist()]


# ----------------------------------------------------------------------------- readers
def read(path: Path, spec: ReadSpec = SPEC, fmt: str = "auto") -> list[dict]:
    found = discover((str(path),), fmt)
    return rows(read_file(found.files[0], found.fs, found.prefix, spec))


def test_jsonl_every_line_lands_somewhere(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "good"}),
        "",  # blank: not a record, but row numbers keep counting lines
        "{not json",
        "[1, 2]",
        json.dumps({"id": "b", "text": 7}),
        json.dumps({"id": None, "text": "no id"}),
        json.dumps({"id": 12, "text": None}),
        json.dumps({"id": "c"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    got = read(path, ReadSpec("id", "text", None, block_rows=3))
    assert [(r["id"], r["status"], r["code"]) for r in got] == [
        ("a", "ok", None),
        ("d.jsonl:2", "error", "invalid_row"),
        ("d.jsonl:3", "error", "invalid_row"),
        ("b", "error", "invalid_input"),
        ("d.jsonl:5", "error", "invalid_row"),
        ("12", "ok", None),
        ("c", "ok", None),
    ]
    assert "not valid JSON" in got[1]["error"] and "JSON list, not an object" in got[2]["error"]
    assert got[3]["error"] == "column 'text' must hold strings, got int"
    assert got[4]["error"] == "id column 'id' is empty"
    assert got[5]["text"] is None  # left for the core to reject with its own message

    array = tmp_path / "array.json"
    array.write_text('[{"text": "a"}]\n')
    with pytest.raises(ValueError, match="holds a JSON array"):
        read(array)


def test_lone_surrogates_fail_their_own_row(tmp_path):
    """`\\ud800` is valid JSON, but no UTF-8 (Arrow) column can hold it: such a text, id or
    image reference is an invalid_input row, and the rows around it are read (the block with
    them used to raise UnicodeEncodeError and fail the job)."""
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"id": "a", "text": "good"}\n'
        '{"id": "b", "text": "x \\ud800 y"}\n'
        '{"id": "c\\udfff", "text": "good id-less"}\n'
        '{"id": "d", "text": "pic", "image": "p\\ud800.png"}\n'
        '{"id": "e", "text": "also good"}\n'
    )
    got = read(path, ReadSpec("id", "text", "image", block_rows=2))
    assert [(r["id"], r["status"], r["code"]) for r in got] == [
        ("a", "ok", None),
        ("b", "error", "invalid_input"),
        ("d.jsonl:2", "error", "invalid_input"),
        ("d", "error", "invalid_input"),
        ("e", "ok", None),
    ]
    assert got[1]["error"] == (
        "column 'text' holds a lone surrogate U+D800 at character 2, which is not valid "
        "Unicode text (it cannot be encoded as UTF-8)"
    )
    assert got[2]["error"].startswith("id column 'id' holds a lone surrogate U+DFFF")
    assert got[3]["error"].startswith("column 'image' holds a lone surrogate U+D800")


def test_csv_records_and_layout_errors(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('id\ttext\n1\thello\n2\t"multi\nline"\n3\ttoo\tmany\n\n4\t\n')
    got = read(path, ReadSpec("id", "text", None))
    assert [(r["id"], r["status"], r["text"]) for r in got] == [
        ("1", "ok", "hello"),
        ("2", "ok", "multi\nline"),
        ("d.tsv:2", "error", None),
        ("4", "ok", ""),
    ]
    assert got[2]["error"] == "CSV record has 3 fields, the header has 2"
    with pytest.raises(
        ValueError, match=r"missing column\(s\) \['body'\]; its columns are: id, text"
    ):
        read(path, ReadSpec("id", "body", None))


def test_txt_and_parquet_rows(tmp_path):
    txt = tmp_path / "d.txt.gz"
    txt.write_bytes(gzip.compress(b"first\r\n\n\xff\xfe bad\nlast"))
    got = read(txt)
    assert [(r["id"], r["status"], r["text"]) for r in got] == [
        ("d.txt.gz:0", "ok", "first"),
        ("d.txt.gz:1", "ok", ""),
        ("d.txt.gz:2", "error", None),
        ("d.txt.gz:3", "ok", "last"),
    ]
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"key": [10, None, 12], "text": ["a", "b", None]}), parquet)
    got = read(parquet, ReadSpec("key", "text", None, block_rows=2))
    assert [(r["id"], r["status"]) for r in got] == [
        ("10", "ok"),
        ("d.parquet:1", "error"),
        ("12", "ok"),
    ]
    pq.write_table(pa.table({"text": [1, 2]}), parquet)
    assert {r["code"] for r in read(parquet)} == {"invalid_input"}
