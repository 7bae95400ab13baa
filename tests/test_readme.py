"""The README stays true: every `qwen3-embed` command in its shell blocks parses with the real
argument parser, and the offline quick start runs as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from qwen3_embed.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)


def qwen3_embed_commands(text: str) -> list[list[str]]:
    """Each `qwen3-embed ...` command of the shell blocks, as argv (after `qwen3-embed`)."""
    commands = []
    for block in shell_blocks(text):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #", 1)[0]
            # Command substitutions stand for a path; the parser only needs a word there.
            line = re.sub(r'"\$\(.*?\)"', "SUBSTITUTED_PATH", line)
            for part in line.split("&&"):
                words = shlex.split(part)
                if words and words[0] == "qwen3-embed":
                    commands.append(words[1:])
    return commands


def test_readme_has_the_two_quick_start_commands():
    blocks = shell_blocks(README.split("## Quick start", 1)[1])
    assert "qwen3-embed embed" in blocks[0] and "bash .ci/run" in "".join(blocks)


@pytest.mark.parametrize("argv", qwen3_embed_commands(README), ids=lambda argv: " ".join(argv)[:60])
def test_every_readme_command_parses(argv):
    args = build_parser(argv).parse_args(argv)
    assert callable(args.handler)


def test_offline_quick_start_runs_as_written(ray_cluster, tmp_path):
    quick_start = README.split("## Quick start", 1)[1]
    offline = next(
        block for block in shell_blocks(quick_start) if "make-tiny-model" in block
    ).strip()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,  # the session's cluster
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(
        ["bash", "-c", offline], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    output = next(path for path in tmp_path.iterdir() if path.name.startswith("sample-embeddings"))
    table = pads.dataset(str(output), format="parquet").to_table()
    assert table.num_rows == 271
    assert "embedded" in result.stdout


def test_http_examples_run_against_the_served_app(ray_cluster, tmp_path):
    """The README's curl and `openai` examples, run as written against the Serve app (a tiny
    model under the README's served name, with the README's key; only the address differs)."""
    import json

    from ray import serve
    from test_serve_support import start_serve_once

    from deployments.app import build_app
    from qwen3_embed.testing import make_tiny_text_model

    model_dir = make_tiny_text_model(
        tmp_path / "model", hidden_size=256
    )  # the examples ask for 256 dims
    keys = tmp_path / "keys"
    keys.write_text("key1\nkey2\n")  # a key file holds one key per line
    app = build_app(
        {
            "models": [
                {
                    "model": str(model_dir),
                    "served_model_name": "qwen3-0.6b",
                    "cpus_per_replica": 0.25,
                }
            ],
            "auth": {"api_key_file": str(keys)},
            "ingress": {"cpus_per_replica": 0.1},
        }
    )
    port = start_serve_once()
    serve.run(app, name="readme", route_prefix="/readme")
    base = f"http://127.0.0.1:{port}/readme"
    try:
        curl = next(block for block in shell_blocks(README) if block.lstrip().startswith("curl"))
        curl = curl.replace("http://127.0.0.1:8000", base)
        result = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        body = json.loads(result.stdout)
        assert "data" in body, body
        assert len(body["data"]) == 1 and len(body["data"][0]["embedding"]) == 256

        python = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
        example = next(block for block in python if "OpenAI(" in block)
        namespace: dict = {}
        exec(example.replace("http://127.0.0.1:8000/v1", f"{base}/v1"), namespace)  # noqa: S102
        assert len(namespace["documents"].data[0].embedding) == 256
        assert len(namespace["query"].data[0].embedding) == 256
    finally:
        serve.delete("readme")
