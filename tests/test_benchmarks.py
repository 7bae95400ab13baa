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
    assert "SMOKE RUN" in (tmp_path / "gpu-smoke.md").read_text()
