"""`qwen3-embed doctor` on CPU: the real command, its report and exit status, and its Ray
fan-out against the session's local cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKS = ["parity", "oom_split", "compile", "host_syncs"]


def test_doctor_reports_and_checks_on_cpu_without_ray():
    # The real command in its own process; it must not import Ray, pydantic or the layers
    # (the GPU machine has no Ray).
    script = (
        "import sys\nfrom qwen3_embed.cli import main\nrc = main(['doctor', '--json'])\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('ray', 'pydantic', 'pipelines', 'deployments'))\n"
        "assert not leaked, leaked\nsys.exit(rc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(report)[:5] == ["ok", "device", "forward_mode", "attention_kernel", "checks"]
    assert report["ok"] is True and report["device"] == "cpu"
    # `auto` on CPU: padded, through sdpa (no varlen kernel there).
    assert (report["forward_mode"], report["attention_kernel"]) == ("padded", "sdpa")
    checks = {check["name"]: check for check in report["checks"]}
    assert list(checks) == CHECKS
    parity = checks["parity"]
    assert parity["ok"] is True
    for pair in ("padded_vs_alone", "packed_vs_alone", "packed_vs_padded"):
        assert parity[pair]["max_abs_diff"] <= 1e-4  # fp32 on CPU
    # What cannot run here is skipped with its reason, never reported as passed.
    for name in ("oom_split", "compile", "host_syncs"):
        assert checks[name]["ok"] is None and checks[name]["skipped"]
    assert "GPU" in checks["oom_split"]["skipped"]
    assert report["versions"]["torch"] and report["max_batch_tokens"] == 16384
    assert "qwen3-embed doctor: OK" in result.stdout


def _sliding_window_model(directory: Path) -> Path:
    """A Qwen3 with sliding-window attention: the packed path does not reproduce it."""
    from qwen3_embed.testing import make_tiny_text_model

    make_tiny_text_model(directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(use_sliding_window=True, sliding_window=4, max_window_layers=0)
    config.pop("layer_types", None)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_doctor_exits_non_zero_when_a_check_fails(tmp_path, capsys):
    from qwen3_embed.cli import main

    model = _sliding_window_model(tmp_path / "sliding")
    assert main(["doctor", "--model", str(model), "--json"]) == 1
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["ok"] is False
    parity = report["checks"][0]
    assert parity["name"] == "parity" and parity["ok"] is False


@pytest.mark.slow
def test_doctor_runs_on_each_node_of_a_cpu_only_cluster(ray_cluster, capsys):
    from qwen3_embed.cli import main

    address = ray_cluster.get_runtime_context().gcs_address
    assert main(["doctor", "--address", address, "--json"]) == 0
    out = capsys.readouterr().out
    assert "CPU-only cluster" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["cluster"] == "cpu-only"
    (node,) = summary["nodes"]  # the local cluster's one node
    assert node["device"] == "cpu" and node["node_ip"]
    assert [check["name"] for check in node["checks"]] == CHECKS
