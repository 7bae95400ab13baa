"""Storage helpers (pipelines/storage.py): glob patterns, atomic writes."""

from __future__ import annotations

import pytest

from pipelines.storage import glob_to_regex, resolve, write_bytes_atomically


def test_glob_to_regex():
    assert glob_to_regex("*.jsonl").match("a.jsonl") and not glob_to_regex("*.jsonl").match(
        "x/a.jsonl"
    )
    assert glob_to_regex("**/*.csv").match("a.csv") and glob_to_regex("**/*.csv").match("x/y/a.csv")
    assert glob_to_regex("part-[0-9].txt").match("part-3.txt") and not glob_to_regex(
        "part-[!0-9].txt"
    ).match("part-3.txt")


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = resolve(str(tmp_path / "f.bin"))
    write_bytes_atomically(target, b"data")
    assert (tmp_path / "f.bin").read_bytes() == b"data"
    assert list((tmp_path / "_tmp").iterdir()) == []

    def failing(stream):
        stream.write(b"half")
        raise RuntimeError("killed")

    from pipelines.storage import write_atomically

    with pytest.raises(RuntimeError):
        write_atomically(resolve(str(tmp_path / "g.bin")), failing)
    assert not (tmp_path / "g.bin").exists() and list((tmp_path / "_tmp").iterdir()) == []
