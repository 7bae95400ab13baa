"""The README and the pages it links stay true: every command block of every page (README,
docs/, CONTRIBUTING, CHANGELOG, benchmarks/README) says whether a test runs it as written
(`# tested: KEY`) or what it needs that CI has not (`# needs: ...`); every `qwen3-embed` command
parses with the real argument parser; the options tables name every flag; relative links and
their anchors resolve; the offline quick start, the offline server and the HTTP client examples
run as written."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from serve_support import free_port

from qwen3_embed.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
# Every documentation page whose blocks are tested or marked (cluster_configs/README.md has a
# test of its own: tests/cluster/test_cluster_configs.py).
PAGES = {
    path.relative_to(REPO).as_posix(): path.read_text()
    for path in [
        REPO / "README.md",
        REPO / "CONTRIBUTING.md",
        REPO / "CHANGELOG.md",
        REPO / "benchmarks" / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
    ]
}
ALL_PAGES = "\n".join(PAGES.values())


def page_with(marker: str) -> str:
    """The one page that holds `marker` (a table's title, a section's first words)."""
    holders = [text for text in PAGES.values() if marker in text]
    assert len(holders) == 1, f"{marker!r} is on {len(holders)} pages, expected one"
    return holders[0]


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)


def command_blocks(text: str) -> list[str]:
    """Every bash and python block (plain ``` blocks are diagrams, not commands)."""
    return re.findall(r"```(?:bash|python)\n(.*?)```", text, flags=re.DOTALL)


# `# tested: KEY` -> the test that runs the block tagged KEY exactly as written
TESTED_BY = {
    "offline-batch": "test_offline_quick_start_runs_as_written (and .ci/clean-install-check)",
    "offline-serve": "test_offline_server_and_http_examples_run_as_written (and .ci/clean-install-check)",
    "http-examples": "test_offline_server_and_http_examples_run_as_written",
    "generic-clients": "tests/deployments/test_serve_app.py::test_readme_generic_client_blocks_run_as_written",
    "python-api": "test_python_api_blocks_run",
    "python-api-rerank": "test_reranker_blocks_run",
    "ci": ".ci/run itself",
    "cluster-submit": "tests/cluster/test_cluster_submit.py (a real head on 127.0.0.1, free ports)",
    "offline-rerank-serve": "test_offline_rerank_server_and_examples_run_as_written",
    "rerank-examples": "test_offline_rerank_server_and_examples_run_as_written",
    "offline-rerank-batch": "test_offline_rerank_batch_runs_as_written",
}


def tagged(key: str) -> list[str]:
    blocks = [block for block in command_blocks(ALL_PAGES) if block.startswith(f"# tested: {key} ")]
    assert blocks, f"no documentation block is tagged '# tested: {key}'"
    return blocks


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
                words = shlex.split(part, comments=True)
                while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                    words = words[1:]  # VAR=value prefixes set the environment
                if words and words[0] == "qwen3-embed":
                    commands.append(words[1:])
    return commands


def test_readme_has_the_two_quick_start_commands():
    """The main batch job first, then CI; and the test command is the one `.ci/run` runs."""
    blocks = shell_blocks(README.split("## Quick start", 1)[1].split("\n## ", 1)[0])
    assert "qwen3-embed embed" in blocks[0] and "bash .ci/run" in "".join(blocks)
    (test_command,) = [
        line
        for block in blocks
        for line in block.splitlines()
        if line.startswith("python -m pytest")
    ]
    assert test_command in (REPO / ".ci" / "run").read_text().splitlines()


def test_the_readme_is_a_front_page():
    """Issue #29: what it is, install, quick start, one example per way to run it, links; the
    reference lives in docs/."""
    assert len(README.splitlines()) <= 450


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_command_block_is_tested_or_says_what_it_needs(page):
    for block in command_blocks(PAGES[page]):
        first = block.splitlines()[0]
        tested = re.fullmatch(r"# tested: (\S+)( .*)?", first)
        assert tested or first.startswith("# needs: "), (
            f"{page} block without '# tested: KEY' or '# needs: ...' first line:\n{block}"
        )
        if tested:
            assert tested.group(1) in TESTED_BY, f"unknown test key in {first!r}"


def test_every_tested_key_is_on_a_page():
    for key in TESTED_BY:
        tagged(key)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return {_slug(heading) for heading in re.findall(r"^#+ (.+)$", prose, flags=re.M)}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_relative_links_and_anchors_resolve(page):
    prose = re.sub(r"```.*?```", "", PAGES[page], flags=re.DOTALL)
    here = (REPO / page).parent
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        file = (here / path).resolve() if path else REPO / page
        missing_anchor = (
            file.exists()
            and bool(anchor)
            and file.suffix == ".md"
            and anchor not in _anchors(file.read_text())
        )
        if not file.exists() or missing_anchor:
            broken.append(target)
    assert broken == [], f"{page}: broken links {broken}"


@pytest.mark.parametrize(
    "argv", qwen3_embed_commands(ALL_PAGES), ids=lambda argv: " ".join(argv)[:60]
)
def test_every_documented_command_parses(argv):
    args = build_parser(argv).parse_args(argv)
    assert callable(args.handler)


@pytest.mark.parametrize("command", ["embed", "serve"])
def test_the_options_table_names_every_flag(command):
    """The "`qwen3-embed <command>` options" table (docs/batch-job.md, docs/serving.md) names
    every flag --help shows (and no flag the command no longer has)."""
    title = f"**`qwen3-embed {command}` options**"
    table = page_with(title).split(title, 1)[1].split("\n\n", 2)[1]
    documented = {
        flag for flag in re.findall(r"`(--[a-z][a-z0-9-]*)", table) if not flag.startswith("--no-")
    }
    parser = build_parser([command])._subparsers._group_actions[0].choices[command]
    flags = {
        option
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for option in action.option_strings
        if option.startswith("--") and not option.startswith("--no-") and option != "--help"
    }
    assert flags - documented == set(), f"flags missing from the {command} table"
    assert documented - flags == set(), f"the {command} table names flags the command lacks"


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        **extra,
    }


def test_offline_quick_start_runs_as_written(ray_cluster, tmp_path):
    (offline,) = tagged("offline-batch")
    env = _env(RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)  # the session's cluster
    result = subprocess.run(
        ["bash", "-c", offline], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    output = next(path for path in tmp_path.iterdir() if path.name.startswith("sample-embeddings"))
    table = pads.dataset(str(output), format="parquet").to_table()
    assert table.num_rows == 271
    assert "embedded" in result.stdout


def test_python_api_blocks_run(tmp_path, monkeypatch):
    """The runnable block as written; the hub block with the tiny model for the hub id."""
    (runnable,) = tagged("python-api")
    monkeypatch.chdir(tmp_path)
    result = subprocess.run(
        ["bash", "-c", runnable], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.Size([1, 32])" in result.stdout
    hub_block = next(
        block
        for block in re.findall(r"```python\n(.*?)```", ALL_PAGES, flags=re.DOTALL)
        if "Embedder.from_pretrained(" in block and "Qwen3-Embedding-0.6B" in block
    )
    namespace: dict = {}
    exec(hub_block.replace('"Qwen/Qwen3-Embedding-0.6B"', '"/tmp/tiny-qwen3"'), namespace)  # noqa: S102
    assert namespace["documents"].embeddings.shape == (1, 256)
    assert namespace["out"].embeddings.shape == (2, namespace["embedder"].hidden_size)


def test_reranker_blocks_run(tmp_path, monkeypatch):
    """The runnable block as written; the hub block with tiny rerankers for the hub ids (and a
    photo and a clip of its own for the VL call's car.jpg and clip.mp4)."""
    import numpy as np
    from media_support import write_mp4
    from PIL import Image

    from qwen3_embed.testing import make_tiny_model

    (runnable,) = tagged("python-api-rerank")
    monkeypatch.chdir(tmp_path)
    result = subprocess.run(
        ["bash", "-c", runnable], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(2,)" in result.stdout
    hub_block = next(
        block
        for block in re.findall(r"```python\n(.*?)```", ALL_PAGES, flags=re.DOTALL)
        if "Reranker.from_pretrained(" in block and "Qwen3-Reranker-0.6B" in block
    )
    text_dir = make_tiny_model(tmp_path / "tiny-text-reranker", task="rerank")
    vl_dir = make_tiny_model(tmp_path / "tiny-vl-reranker", family="vl", task="rerank")
    Image.fromarray(np.full((64, 96, 3), 200, dtype=np.uint8)).save(tmp_path / "car.jpg")
    write_mp4(tmp_path / "clip.mp4", np.full((4, 48, 64, 3), 90, dtype=np.uint8), fps=2)
    code = hub_block.replace('"Qwen/Qwen3-Reranker-0.6B"', repr(str(text_dir))).replace(
        '"Qwen/Qwen3-VL-Reranker-2B"', repr(str(vl_dir))
    )
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102
    assert namespace["scores"].shape == (2,) and namespace["pairs"].shape == (1,)
    assert namespace["vl"].family == "vl"


def test_notebook_conventions_block_runs(tmp_path):
    """The named-prompt / numpy block, with a tiny model (as wide as the CLI's) for the hub id."""
    import numpy as np
    import torch

    from qwen3_embed.cli import TINY_TEXT_HIDDEN_SIZE
    from qwen3_embed.testing import make_tiny_text_model

    model_dir = make_tiny_text_model(tmp_path / "tiny", hidden_size=TINY_TEXT_HIDDEN_SIZE)
    block = next(
        block
        for block in re.findall(r"```python\n(.*?)```", ALL_PAGES, flags=re.DOTALL)
        if 'prompt_name="query"' in block
    )
    namespace: dict = {}
    exec(block.replace('"Qwen/Qwen3-Embedding-0.6B"', repr(str(model_dir))), namespace)  # noqa: S102
    hidden = namespace["embedder"].hidden_size
    assert namespace["embedder"].prompts["document"] == ""
    assert isinstance(namespace["queries"], np.ndarray)
    assert namespace["queries"].shape == (1, hidden)
    assert namespace["scores"].shape == (1, 1)
    assert isinstance(namespace["tensor"], torch.Tensor) and namespace["tensor"].shape == (1, 256)
    assert namespace["out"].embeddings.shape == (2000, hidden)


def test_offline_server_and_http_examples_run_as_written(tmp_path):
    """The Quick start's offline `qwen3-embed serve` (its own private Ray, as a user gets it; only
    the port is moved off 8000), then the README's curl and `openai` examples against it, then
    Ctrl-C: a clean exit."""
    import json

    subprocess.run(
        ["bash", "-c", tagged("offline-batch")[0].split("&&")[0]],  # make-tiny-model, as written
        cwd=tmp_path,
        env=_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    (serve_block,) = tagged("offline-serve")
    port = free_port()
    env = _env()
    env.pop("RAY_ADDRESS", None)
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w")  # noqa: SIM115 (closed below, after the server has exited)
    server = subprocess.Popen(
        ["bash", "-c", f"{serve_block.strip().splitlines()[-1]} --port {port} --num-cpus 2"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_line(server, log_path, "Ctrl-C to stop", timeout_s=240)
        curl = next(block for block in tagged("http-examples") if "curl" in block)
        result = subprocess.run(
            ["bash", "-c", curl.replace("http://127.0.0.1:8000", base)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        body = json.loads(result.stdout)
        assert "data" in body, body
        assert len(body["data"]) == 1 and len(body["data"][0]["embedding"]) == 256

        example = next(block for block in tagged("http-examples") if "OpenAI(" in block)
        namespace: dict = {}
        exec(example.replace("http://127.0.0.1:8000/v1", f"{base}/v1"), namespace)  # noqa: S102
        assert len(namespace["documents"].data[0].embedding) == 256
        assert len(namespace["query"].data[0].embedding) == 256
    finally:
        server.send_signal(signal.SIGINT)  # what Ctrl-C sends
        server.wait(timeout=120)
        log.close()
    output = log_path.read_text()
    assert server.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]


def _make_tiny_rerank_models(tmp_path: Path) -> list[str]:
    """The offline rerank serve block's make-tiny-model line, run as written; its lines."""
    (serve_block,) = tagged("offline-rerank-serve")
    lines = serve_block.strip().splitlines()[1:]
    subprocess.run(
        ["bash", "-c", lines[0]], cwd=tmp_path, env=_env(), check=True, capture_output=True,
        timeout=300,
    )  # fmt: skip
    return lines


def test_offline_rerank_server_and_examples_run_as_written(tmp_path):
    """The offline rerank `qwen3-embed serve` (an embedding model and a reranker, private Ray;
    only the port moved off 8000), the README's rerank curl and `cohere` examples against it,
    then Ctrl-C: a clean exit."""
    import json

    serve_line = _make_tiny_rerank_models(tmp_path)[-1]
    port = free_port()
    env = _env()
    env.pop("RAY_ADDRESS", None)
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w")  # noqa: SIM115 (closed below, after the server has exited)
    server = subprocess.Popen(
        ["bash", "-c", f"{serve_line} --port {port} --num-cpus 2"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_line(server, log_path, "Ctrl-C to stop", timeout_s=300)
        curls = [block for block in tagged("rerank-examples") if "curl" in block]
        assert len(curls) == 2
        answers = []
        for curl in curls:
            result = subprocess.run(
                ["bash", "-c", curl.replace("http://127.0.0.1:8000", base)],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            answers.append(json.loads(result.stdout))
        rerank, score = answers
        assert len(rerank["results"]) == 1, rerank  # top_n 1
        assert [d["index"] for d in score["data"]] == [0, 1], score
        scores = [d["score"] for d in score["data"]]
        # The best of /v1/rerank is the best of /score: the same model, the same pairs.
        assert rerank["results"][0]["index"] == scores.index(max(scores))
        assert abs(rerank["results"][0]["relevance_score"] - max(scores)) <= 1e-6
        example = next(block for block in tagged("rerank-examples") if "cohere" in block)
        namespace: dict = {}
        exec(example.replace("http://127.0.0.1:8000", base), namespace)  # noqa: S102
        assert namespace["best"].index == rerank["results"][0]["index"]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)
        log.close()
    output = log_path.read_text()
    assert server.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]


def test_offline_rerank_batch_runs_as_written(ray_cluster, tmp_path):
    import json

    _make_tiny_rerank_models(tmp_path)
    (block,) = tagged("offline-rerank-batch")
    env = _env(RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)  # the session's cluster
    result = subprocess.run(
        ["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = pads.dataset(str(tmp_path / "reranked"), format="parquet").to_table().to_pylist()
    assert len(rows) == 1 and rows[0]["rank"] == 1  # --top-n 1 of the query's two documents
    manifest = json.loads((tmp_path / "reranked" / "_manifest.json").read_text())
    assert manifest["consistent"] and manifest["pairs_in"] == 2


def _wait_for_line(server: subprocess.Popen, log_path: Path, line: str, timeout_s: float) -> None:
    """The server is ready when it says so: from that line on, Ctrl-C is a clean stop."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if line in log_path.read_text():
            return
        if server.poll() is not None:
            raise AssertionError(f"the server exited early:\n{log_path.read_text()[-4000:]}")
        time.sleep(1)
    raise AssertionError(f"no {line!r} after {timeout_s} s:\n{log_path.read_text()[-4000:]}")


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_file_a_page_names_exists(page):
    """Tests and modules move (issue #29 split the theme test files): a page that names a file
    names one that is there."""
    named = set(re.findall(r"\b((?:tests|qwen3_embed|pipelines|deployments|benchmarks)/[\w/]+\.py)\b",
                           PAGES[page]))  # fmt: skip
    assert sorted(path for path in named if not (REPO / path).exists()) == []
