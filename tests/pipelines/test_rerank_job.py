"""The rerank batch job and `rerank_dataset` on the tiny text reranker: scores equal the core's,
ranks and `--top-n` equal sorting the full scores, bad pairs become `_errors/` rows, and a
job killed mid-way then rerun gives each pair exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from killed_driver import wait_for_first_part, wait_until_output_settles

from pipelines.rerank_sink import explode
from pipelines.rerank_stage import GROUP_SCHEMA, RerankSettings, rank_scores, score_groups

TOL = 1e-5
QUERIES = [f"what is item {q}?" for q in range(6)]


def _candidates(q: int) -> list[str]:
    return [f"item {q * 7 + d} is " + "a thing " * (d % 5 + 1) for d in range(5)]


def _read(folder: Path) -> pa.Table:
    return pads.dataset(str(folder), format="parquet").to_table()


@pytest.fixture(scope="module")
def cluster_env(ray_cluster) -> dict[str, str]:
    return {
        **os.environ,
        "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def test_rank_scores_best_first_ties_in_input_order():
    assert rank_scores(np.array([0.1, 0.9, 0.1, 0.5], np.float32)).tolist() == [3, 1, 4, 2]


def test_score_groups_equal_the_core_and_bad_pairs_fail_alone(tiny_text_reranker):
    from qwen3_embed.options import LoadOptions

    settings = RerankSettings(LoadOptions(model="unused"), None, True, top_n=2)
    docs = ["a first document", "", "a much longer third document " * 3]
    groups = pa.Table.from_pylist(
        [
            {"id": "q0", "query": "which document?", "document_ids": ["d0", "d1", "d2"],
             "documents": docs, "status": "ok", "num_pairs": 3},
            {"id": "q1", "query": None, "document_ids": ["x"], "documents": ["text"],
             "status": "ok", "num_pairs": 1},
            {"id": "q2", "query": None, "document_ids": ["y"], "documents": None,
             "status": "skipped", "num_pairs": 1},
        ],
        schema=GROUP_SCHEMA,
    )  # fmt: skip
    rows = score_groups(groups, tiny_text_reranker, settings).to_pylist()
    assert [row["status"] for row in rows] == ["ok", "error", "skipped"]
    expected = tiny_text_reranker.score("which document?", [docs[0], docs[2]])
    first = rows[0]
    assert first["scores"][1] is None and first["codes"][1] == "invalid_input"
    assert abs(first["scores"][0] - expected[0]) <= TOL
    assert abs(first["scores"][2] - expected[1]) <= TOL
    kept, errors = explode(rows)
    by_rank = sorted(
        zip(kept.column("rank").to_pylist(), kept.column("document_id").to_pylist(), strict=True)
    )
    best_first = ["d0", "d2"] if expected[0] >= expected[1] else ["d2", "d0"]
    assert by_rank == [(1, best_first[0]), (2, best_first[1])]
    failed = errors.to_pylist()
    assert [(e["query_id"], e["document_id"], e["query_failed"]) for e in failed] == [
        ("q0", "d1", False),
        ("q1", "x", True),
    ]


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)


def _command(input_path: Path, output: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qwen3_embed", "rerank", str(input_path), str(output),
            "--model", str(model), "--no-progress", *extra]  # fmt: skip


@pytest.mark.slow
def test_top_n_equals_sorting_the_full_scores(
    cluster_env, tiny_text_reranker_dir, tiny_text_reranker, tmp_path
):
    rows = [{"qid": f"q{q}", "query": QUERIES[q], "hits": _candidates(q)} for q in range(6)]
    rows.append({"qid": "q-bad", "query": "", "hits": ["some text"]})  # a pair the core refuses
    corpus = tmp_path / "runs.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    full, top = tmp_path / "full", tmp_path / "top"
    common = ("--document-column", "hits", "--query-id-column", "qid")
    done = _run(_command(corpus, full, tiny_text_reranker_dir, *common), cluster_env)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _run(_command(corpus, top, tiny_text_reranker_dir, *common, "--top-n", "2"), cluster_env)
    assert done.returncode == 0, done.stderr[-3000:]
    everything, best = _read(full).to_pylist(), _read(top).to_pylist()
    assert len(everything) == 30 and len(best) == 12
    for q in range(6):
        expected = tiny_text_reranker.score(QUERIES[q], _candidates(q))
        mine = sorted((r for r in everything if r["query_id"] == f"q{q}"), key=lambda r: r["rank"])
        assert [r["rank"] for r in mine] == [1, 2, 3, 4, 5]
        scores = np.array([r["score"] for r in mine])
        assert np.all(np.diff(scores) <= 0)  # rank 1 is the best score
        for r in mine:
            assert abs(r["score"] - expected[int(r["document_id"])]) <= TOL
        top_two = sorted((r for r in best if r["query_id"] == f"q{q}"), key=lambda r: r["rank"])
        assert [(r["document_id"], r["rank"]) for r in top_two] == [
            (r["document_id"], r["rank"]) for r in mine[:2]
        ]
    errors = _read(full / "_errors").to_pylist()
    assert [(e["query_id"], e["query_failed"]) for e in errors] == [("q-bad", True)]
    manifest = json.loads((top / "_manifest.json").read_text())
    assert manifest["consistent"] and manifest["queries_in"] == 7
    assert manifest["this_run"]["pairs_dropped_by_top_n"] == 18
    # A different top_n is another job: refused rather than mixed into OUTPUT.
    refused = _run(_command(corpus, top, tiny_text_reranker_dir, *common), cluster_env)
    assert refused.returncode == 2 and "top_n" in refused.stderr


@pytest.mark.slow
def test_killed_job_then_rerun_gives_each_pair_once(cluster_env, tiny_text_reranker_dir, tmp_path):
    # The pairs form: one (query, document) per row, grouped by the job; ids derived from text.
    corpus = tmp_path / "pairs.jsonl"
    queries = 400
    with corpus.open("w") as handle:
        for q in range(queries):
            for d in range(3):
                text = f"document {d} for query {q}: " + "words " * ((q + d) % 7 + 1)
                handle.write(json.dumps({"query": f"query number {q}", "document": text}) + "\n")
    output = tmp_path / "out"
    command = _command(corpus, output, tiny_text_reranker_dir, "--batch-rows", "8",
                       "--rows-per-file", "8")  # fmt: skip
    driver = subprocess.Popen(
        command, env=cluster_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_first_part(driver, output, timeout_s=300)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    assert json.loads((output / "_manifest.json").read_text())["status"] == "running"
    wait_until_output_settles(output)
    written_before = len(set(_read(output).column("query_id").to_pylist()))
    assert 0 < written_before < queries

    rerun = _run(command, cluster_env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    table = _read(output)
    pairs = list(
        zip(
            table.column("query_id").to_pylist(),
            table.column("document_id").to_pylist(),
            strict=True,
        )
    )
    assert len(pairs) == len(set(pairs)) == queries * 3  # every pair once
    assert len(set(table.column("query_id").to_pylist())) == queries
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["consistent"]
    assert manifest["this_run"]["queries_skipped"] >= written_before
    print("rerank driver kill:", {"queries_before": written_before, **manifest["this_run"]})


@pytest.mark.slow
def test_rerank_dataset_lists_and_pairs(ray_cluster, tiny_text_reranker_dir, tiny_text_reranker):
    import ray

    from pipelines import RerankStageConfig, rerank_dataset

    rows = [{"query": QUERIES[q], "documents": _candidates(q), "keep": q} for q in range(3)]
    config = RerankStageConfig(model=str(tiny_text_reranker_dir), top_n=3, cpus_per_replica=1.0)
    out = rerank_dataset(ray.data.from_items(rows), config).take_all()
    assert sorted(row["keep"] for row in out) == [0, 1, 2]
    for row in out:
        expected = tiny_text_reranker.score(row["query"], row["documents"])
        assert np.max(np.abs(np.array(row["rerank_score"]) - expected)) <= TOL
        assert list(row["rerank_order"]) == np.argsort(-expected, kind="stable")[:3].tolist()
        assert row["rerank_error"] is None

    # One (query, document) pair per row: a float score per row, the core's `score_pairs`; a
    # pair the core refuses (an empty document) has a null score and its reason, alone.
    pairs = [(QUERIES[q], doc) for q in range(3) for doc in _candidates(q)[:3]]
    pairs.insert(4, (QUERIES[1], ""))
    items = [{"query": q, "documents": d, "n": n} for n, (q, d) in enumerate(pairs)]
    out = rerank_dataset(ray.data.from_items(items).repartition(3), config).take_all()
    assert sorted(row["n"] for row in out) == list(range(len(pairs)))
    good = [n for n, (_, d) in enumerate(pairs) if d]
    expected = dict(
        zip(good, tiny_text_reranker.score_pairs([pairs[n] for n in good]), strict=True)
    )
    for row in out:
        assert row["rerank_order"] is None
        if row["n"] in expected:
            assert row["rerank_error"] is None and isinstance(row["rerank_score"], float)
            assert abs(row["rerank_score"] - expected[row["n"]]) <= TOL
        else:
            assert row["rerank_score"] is None and row["rerank_error"], row
