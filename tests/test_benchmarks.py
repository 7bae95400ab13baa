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
