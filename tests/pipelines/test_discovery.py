"""Input discovery (pipelines/discovery.py): data files of a folder with their formats and
relative paths; unknown and missing inputs refused."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.discovery import discover


# ------------------------------------------------------------------------------ inputs
@pytest.fixture()
def corpus_folder(tmp_path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.jsonl").write_text('{"text": "x"}\n')
    (root / "sub" / "b.csv").write_text("text\nx\n")
    (root / "c.txt.gz").write_bytes(gzip.compress(b"x\ny\n"))
    pq.write_table(pa.table({"text": ["x"]}), root / "d.parquet")
    (root / "_SUCCESS").write_text("")
    (root / ".d.parquet.crc").write_text("")
    (root / "_errors").mkdir()
    (root / "_errors" / "e.jsonl").write_text("{}\n")
    return root


def test_discover_lists_data_files_with_formats_and_relative_paths(corpus_folder):
    found = discover((str(corpus_folder),))
    assert [(f.relpath, f.format) for f in found.files] == [
        ("a.jsonl", "jsonl"),
        ("c.txt.gz", "txt"),
        ("d.parquet", "parquet"),
        ("sub/b.csv", "csv"),
    ]
    assert found.root == str(corpus_folder)
    # A glob keeps the same root as the folder, so ids do not change between the two.
    glob = discover((str(corpus_folder / "**" / "*.csv"),))
    assert [f.relpath for f in glob.files] == ["sub/b.csv"]
    single = discover((str(corpus_folder / "sub" / "b.csv"),))
    assert [f.relpath for f in single.files] == ["b.csv"]
    both = discover((str(corpus_folder / "a.jsonl"), str(corpus_folder / "sub")))
    assert [f.relpath for f in both.files] == ["a.jsonl", "sub/b.csv"]
    same_twice = discover((str(corpus_folder / "a.jsonl"), str(corpus_folder / "*.jsonl")))
    assert len(same_twice.files) == 1


def test_discover_refuses_unknown_and_missing(corpus_folder):
    (corpus_folder / "notes.md").write_text("hi")
    with pytest.raises(
        ValueError, match=r"cannot tell the format of 1 input file\(s\): .*notes.md.*pass --format"
    ):
        discover((str(corpus_folder),))
    assert {f.format for f in discover((str(corpus_folder / "notes.md"),), fmt="txt").files} == {
        "txt"
    }
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover((str(corpus_folder / "nope.jsonl"),))
    with pytest.raises(FileNotFoundError, match="matches no files"):
        discover((str(corpus_folder / "*.xml"),))
