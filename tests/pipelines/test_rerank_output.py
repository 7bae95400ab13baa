"""`check_rerank_output`: the rerank job's "same job", with the embedding job's rules for the
folder, the manifest and the comparison (`resume.output_entries`, `resume.read_manifest`,
`identity.identity_differences`)."""

from __future__ import annotations

import json

import pytest

from pipelines.rerank_output import check_rerank_output
from pipelines.resume import OutputMismatchError
from pipelines.storage import resolve

IDENTITY = {
    "model": "/models/reranker",
    "instruction": None,
    "top_n": None,
    "query_column": "query",
    "document_column": "document",
    "query_id_column": None,
    "document_id_column": None,
}


def test_another_rerank_job_or_a_damaged_manifest_is_refused(tmp_path):
    output = resolve(str(tmp_path / "out"))
    assert check_rerank_output(output, IDENTITY) is None  # a new OUTPUT
    (tmp_path / "out").mkdir()
    manifest = tmp_path / "out" / "_manifest.json"
    manifest.write_text(json.dumps({"kind": "rerank", "identity": IDENTITY}))
    assert check_rerank_output(output, IDENTITY)["identity"] == IDENTITY
    for key, value in (("model", "/models/other"), ("top_n", 3), ("document_column", "hits")):
        with pytest.raises(OutputMismatchError, match=f"{key} .* \\(this job: {value!r}\\)"):
            check_rerank_output(output, {**IDENTITY, key: value})
    manifest.write_text(json.dumps({"identity": {**IDENTITY, "dim": 64}}))  # an embedding job's
    with pytest.raises(OutputMismatchError, match="not a rerank job"):
        check_rerank_output(output, IDENTITY)
    manifest.write_text('{"kind": "rerank", "identity": ')
    with pytest.raises(OutputMismatchError, match="_manifest.json is not JSON"):
        check_rerank_output(output, IDENTITY)
    manifest.unlink()
    (tmp_path / "out" / "notes.txt").write_text("not ours")
    with pytest.raises(OutputMismatchError, match="holds files this job did not write"):
        check_rerank_output(output, IDENTITY)
