"""`requires_vl` really skips without the [vl] extra (an `importorskip("qwen3_embed.vl")` never
did: that package imports without it). Run in a pytest of its own, where `av` (part of the
extra) cannot be imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WITHOUT_AV = (
    "import sys; sys.modules['av'] = None; import pytest; "
    "sys.exit(pytest.main(['-q', '-rs', '-p', 'no:cacheprovider', 'tests/pipelines/test_pipeline_vl.py']))"
)


def test_vl_tests_skip_without_the_vl_extra():
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_AV],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "skipped" in run.stdout and "passed" not in run.stdout, run.stdout[-3000:]
    assert "missing: av" in run.stdout, run.stdout[-3000:]  # the core's own message, as reason
