"""`python -m benchmarks.run --quick` keeps working (a smoke test: speed is never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_report_marks_targets_met_and_not_met():
    from benchmarks.report import markdown

    results = {
        "machine": {
            "date": "d",
            "processor": "p",
            "cpu_count": 2,
            "versions": {k: "v" for k in ("torch", "transformers", "sentence-transformers", "ray")},
        },
        "quick": False,
        "results": {
            "pipeline": {
                "rows": [
                    {"what": "w", "value": "0.5x", "target": ">= 0.85x", "verdict": "**not met**"}
                ]
            }
        },
    }
    assert "| w | 0.5x | >= 0.85x | **not met** |" in markdown(results)


@pytest.mark.slow
def test_quick_benchmark_run_writes_results(tmp_path):
    # Its own process: the benchmarks start private Ray clusters and Serve.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--device",
            "cpu",
            "--out-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads((tmp_path / "cpu-quick.json").read_text())
    assert set(data["results"]) == {"core", "pipeline", "serve", "scale"}
    core = data["results"]["core"][0]
    assert core["max_abs_diff_vs_peer"] <= 1e-4 and core["tokens"] > 0
    table = (tmp_path / "cpu-quick.md").read_text()
    assert "QUICK smoke run" in table and table.count("\n|") >= 8


def test_gpu_benchmark_smoke_runs_on_cpu(tmp_path):
    # The GPU benchmark's own code on a tiny shape on CPU, so it cannot rot between GPU runs.
    # Its own process: it must not need Ray, the batch job or the server (the GPU machine has no
    # Ray), which the subprocess checks too.
    script = (
        "import sys, runpy; sys.argv = ['benchmarks.gpu', '--smoke', '--out-dir', sys.argv[1]];\n"
        "try:\n    runpy.run_module('benchmarks.gpu', run_name='__main__')\n"
        "except SystemExit as done:\n    assert not done.code, done.code\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'pipelines', 'deployments'))\n"
        "assert not leaked, leaked\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads((tmp_path / "gpu-smoke.json").read_text())
    assert data["smoke"] is True
    (run,) = data["results"]
    assert run["packed_kernel"] == "per_sequence_sdpa"
    assert run["packed_vs_padded_min_cosine"] >= 0.99999  # fp32 on CPU: the same vectors
    assert run["peer"]["min_cosine"] >= 0.999
    for path in ("padded", "packed"):
        assert run[path]["lognormal"]["tokens"] > 0 and run[path]["long_documents"]["tokens"] > 0
        runs = run[path]["lognormal"]["runs_seconds"]  # best of several timed runs
        assert len(runs) == 2 and run[path]["lognormal"]["seconds"] == min(runs)
    assert "CUDA" in run["packed_host_syncs"]["skipped"]  # counted on a GPU only
    assert "SMOKE RUN" in (tmp_path / "gpu-smoke.md").read_text()


def test_real_qwen3_shapes_have_head_dim_128(tmp_path):
    # Every Qwen3 embedding model has head_dim 128, not hidden / heads (64 for the 0.6B, 80 for
    # the 4B): the benchmarks' shapes, their FLOP counts and the checkpoints they build say so.
    import json

    from benchmarks import core_vs_st, gpu

    for shape in (core_vs_st.QWEN3_06B, core_vs_st.QWEN3_4B, *gpu.SHAPES.values()):
        assert shape.head_size == 128
    assert gpu.DEFAULT_MODELS == "0.6b"  # 8B is opt-in: the default fits a 10-minute slot
    small = core_vs_st.Shape("test", 64, 1, 2, 1, 128, 128)
    directory = core_vs_st.build_model(small, tmp_path / "model")
    assert json.loads((directory / "config.json").read_text())["head_dim"] == 128
    # Attention projections: q and o are heads x 128 wide, k and v kv_heads x 128.
    assert small.non_embedding_params() == 2 * 64 * 2 * 128 + 2 * 64 * 1 * 128 + 3 * 64 * 128


def test_resume_scale_quick_measures_both_designs(tmp_path):
    # The resume benchmark's own code at a tiny size (no model, no Ray): the synthetic OUTPUT is
    # what the plan says, the fragments design finds every done fragment and reads by id only
    # the in-flight part files, and the synthetic OUTPUT is deleted afterwards.
    from benchmarks import resume_scale

    result = resume_scale.run(quick=True, tmp=tmp_path)
    (entry,) = result["measured"]
    plan = entry["plan"]
    half = plan["fragment_rows"] // 2
    assert entry["rows"] == plan["done"] * plan["fragment_rows"] + plan["in_flight"] * half
    ids, fragments = entry["ids"], entry["fragments"]
    assert ids["ids_read"] == entry["rows"] and ids["object_store_bytes"] == 16 * entry["rows"]
    assert fragments["done_fragments"] == plan["done"]
    # Only files holding in-flight rows are read by id: at most one part file's worth more
    # than the in-flight rows themselves, at each end of the in-flight stretch.
    assert plan["in_flight"] * half <= fragments["ids_read"]
    assert fragments["ids_read"] <= plan["in_flight"] * half + 2 * entry["rows_per_file"]
    assert fragments["object_store_bytes"] == 16 * fragments["ids_read"]
    assert result["extrapolated_1b_90pct"]["rows_done"] == 900_000_000
    assert list(tmp_path.iterdir()) == []


def test_row_bytes_quick_measures_each_stage():
    from benchmarks import row_bytes

    measured = row_bytes.run(quick=True)["measured"]
    # A vector is 4 x dim bytes; the id, status and provenance come on top.
    for dim, value in measured["embedded_block_bytes_per_row"].items():
        assert 4 * int(dim) < value < 4 * int(dim) + 256
    # Token ids are int32: at least 4 bytes a token once prepared.
    assert measured["prepared_block_bytes_per_token"] >= 4
    assert measured["read_block_bytes_per_row"] > measured["text_bytes_per_row"]


@pytest.mark.slow
def test_quick_rerank_benchmark_checks_parity_with_cross_encoder():
    """The reranker benchmark's peer is sentence-transformers' CrossEncoder on the same weights,
    scoring the same tokens (checked before timing); speed is not asserted."""
    import torch

    from benchmarks import rerank_vs_st

    result = rerank_vs_st.run(torch.device("cpu"), quick=True)
    assert result["peer"] == "sentence-transformers CrossEncoder"
    assert result["max_abs_diff_vs_peer"] <= 1e-4 and result["tokens"] > 0


def test_chunking_benchmark_corpus_has_the_issues_shape(tiny_text_model_dir):
    """The chunking benchmark's corpus (its own code, no Ray): log-normal lengths around the
    median, the two longest over 32k tokens; both of its jobs embed the same chunks (the run
    asserts equal tokens and rows before comparing speed)."""
    import numpy as np

    from benchmarks.chunking import long_documents
    from qwen3_embed import Preparer

    tokenizer = Preparer.from_pretrained(tiny_text_model_dir).impl.tokenizer
    texts = long_documents(tokenizer, 16, 3000)
    lengths = sorted(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
    assert lengths[-2] > 32_000 and 1500 < np.median(lengths) < 6000
    assert all("\n\n" in text and ". " in text for text in texts if len(text) > 2000)


@pytest.mark.slow
def test_quick_chunking_benchmark_runs(tmp_path):
    # Its own process: the benchmark starts a private Ray cluster.
    command = [sys.executable, "-m", "benchmarks.run", "--quick", "--device", "cpu"]
    command += ["--only", "chunking", "--name", "chunking", "--out-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    measured = json.loads((tmp_path / "chunking.json").read_text())["results"]["chunking"]
    assert measured["chunked"]["tokens"] == measured["presplit"]["tokens"] > 0
    assert measured["chunks"] > measured["documents"]  # the documents were split
