"""Notebook conventions of the core, as sentence-transformers has them: named prompts from
`config_sentence_transformers.json` (`prompt_name=`, `prompt=`), `encode` returning numpy, and a
progress bar on long calls. CPU, offline: the tiny Qwen3 checkpoint and the real MiniLM weights."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from qwen3_embed import Embedder, InputError, UnsupportedModelError
from qwen3_embed.model_info import read_prompts
from qwen3_embed.registry import WEB_SEARCH_INSTRUCTION

QUERIES = ["What is the capital of China?", "Explain gravity"]
DOCUMENTS = ["The capital of China is Beijing.", "Gravity is a force between two bodies."]
# The "query" prompt the Qwen3-Embedding releases ship, verbatim.
SHIPPED_QUERY_PROMPT = (
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
)
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------ named prompts
def test_tiny_checkpoint_ships_the_qwen3_prompts(tiny_text_model_dir, tiny_text_embedder):
    config = json.loads((tiny_text_model_dir / "config_sentence_transformers.json").read_text())
    assert config["prompts"] == {"query": SHIPPED_QUERY_PROMPT, "document": ""}
    assert config["default_prompt_name"] is None
    assert tiny_text_embedder.prompts == config["prompts"]
    assert tiny_text_embedder.default_prompt_name is None


def test_prompt_name_query_is_exactly_the_instruction_path(tiny_text_embedder):
    by_instruction = tiny_text_embedder.embed(QUERIES, instruction=WEB_SEARCH_INSTRUCTION)
    by_name = tiny_text_embedder.embed(QUERIES, prompt_name="query")
    by_literal = tiny_text_embedder.embed(QUERIES, prompt=SHIPPED_QUERY_PROMPT)
    ids = [p.input_ids for p in tiny_text_embedder.prepare(QUERIES, WEB_SEARCH_INSTRUCTION)]
    assert [p.input_ids for p in tiny_text_embedder.prepare(QUERIES, prompt_name="query")] == ids
    # The same token ids, so the very same vectors (not merely close ones).
    assert torch.equal(by_name.embeddings, by_instruction.embeddings)
    assert torch.equal(by_literal.embeddings, by_instruction.embeddings)
    # ... and not the document vectors: the prompt really is applied.
    plain = tiny_text_embedder.embed(QUERIES).embeddings
    assert (plain - by_name.embeddings).abs().max() > 1e-3


def test_prompt_name_document_is_the_raw_text(tiny_text_embedder):
    assert torch.equal(
        tiny_text_embedder.embed(DOCUMENTS, prompt_name="document").embeddings,
        tiny_text_embedder.embed(DOCUMENTS).embeddings,
    )


def test_per_item_instruction_wins_over_the_call_prompt(tiny_text_embedder):
    mixed = tiny_text_embedder.embed(
        [{"text": QUERIES[0], "instruction": "Find it"}, QUERIES[1]], prompt_name="query"
    ).embeddings
    assert torch.equal(
        mixed[0], tiny_text_embedder.embed([QUERIES[0]], instruction="Find it").embeddings[0]
    )
    assert torch.equal(
        mixed[1], tiny_text_embedder.embed([QUERIES[1]], prompt_name="query").embeddings[0]
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"prompt_name": "passage"},
            r"prompt_name='passage'.*valid names are: 'query', 'document'",
        ),
        (
            {"prompt_name": "query", "instruction": "x"},
            "at most one of.*instruction and prompt_name",
        ),
        ({"prompt_name": "query", "prompt": "q: "}, "at most one of.*prompt and prompt_name"),
        ({"prompt": 3}, "prompt must be a string"),
    ],
)
def test_bad_prompt_arguments_are_refused_before_any_work(tiny_text_embedder, kwargs, message):
    with pytest.raises(InputError, match=message):
        tiny_text_embedder.embed(QUERIES, **kwargs)


def _minilm_with_prompts(minilm_dir: Path, target: Path, **config) -> Path:
    """The real MiniLM files (linked, not copied) with our own config_sentence_transformers.json."""
    target.mkdir()
    for entry in minilm_dir.iterdir():
        if entry.name != "config_sentence_transformers.json":
            (target / entry.name).symlink_to(entry)
    (target / "config_sentence_transformers.json").write_text(json.dumps(config))
    return target


def test_prompts_match_sentence_transformers_on_real_weights(minilm_dir, tmp_path):
    """sentence-transformers reads the same file: same prompts, same vectors, default included."""
    from sentence_transformers import SentenceTransformer

    model_dir = _minilm_with_prompts(
        minilm_dir,
        tmp_path / "minilm-prompts",
        prompts={"query": "query: ", "passage": "passage: "},
        default_prompt_name="passage",
    )
    reference = SentenceTransformer(str(model_dir), device="cpu")
    embedder = Embedder.from_pretrained(model_dir, device="cpu")
    assert embedder.prompts == reference.prompts
    assert embedder.prompts == {"query": "query: ", "passage": "passage: ", "document": ""}
    for kwargs in (
        {"prompt_name": "query"},
        {"prompt_name": "document"},  # not in the file: "" in both
        {},  # the default prompt, "passage"
        {"prompt": ""},
        {"prompt": "search: "},
    ):
        expected = reference.encode(QUERIES, convert_to_tensor=True, **kwargs).cpu()
        got = embedder.encode(QUERIES, convert_to_tensor=True, **kwargs)
        assert (got - expected).abs().max().item() <= 1e-5, kwargs
    # The default prompt really is applied when a call names none (as sentence-transformers does).
    assert not torch.allclose(
        embedder.encode(QUERIES, convert_to_tensor=True),
        embedder.encode(QUERIES, prompt="", convert_to_tensor=True),
    )


def test_read_prompts_refuses_a_default_that_is_not_a_prompt(tmp_path):
    (tmp_path / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "q: "}, "default_prompt_name": "passage"})
    )
    with pytest.raises(UnsupportedModelError, match="default_prompt_name 'passage'.*query"):
        read_prompts(tmp_path)
    (tmp_path / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": None}, "default_prompt_name": None})
    )
    # null reads as "", and "query" / "document" are always there, as in sentence-transformers
    assert read_prompts(tmp_path) == ({"query": "", "document": ""}, None)
    assert read_prompts(tmp_path / "absent") == ({"query": "", "document": ""}, None)


def test_vl_prompt_is_the_system_turn_like_the_instruction(tiny_vl_embedder):
    """A chat model has no text to prefix: a prompt becomes the system turn, as the instruction."""
    task = "Retrieve images that match the query"
    by_prompt = tiny_vl_embedder.prepare(["a red circle"], prompt=task)
    by_instruction = tiny_vl_embedder.prepare(["a red circle"], instruction=task)
    assert by_prompt[0].input_ids == by_instruction[0].input_ids
    assert by_prompt[0].input_ids != tiny_vl_embedder.prepare(["a red circle"])[0].input_ids
    with pytest.raises(InputError, match="instruction must not be empty"):
        tiny_vl_embedder.prepare(["a red circle"], prompt="   ")


# ------------------------------------------------------------------ encode: numpy output
def test_encode_returns_numpy_like_sentence_transformers(tiny_text_embedder):
    vectors = tiny_text_embedder.encode(QUERIES, prompt_name="query", truncate_dim=32)
    assert isinstance(vectors, np.ndarray)
    assert vectors.dtype == np.float32 and vectors.shape == (2, 32)
    expected = tiny_text_embedder.embed(QUERIES, instruction=WEB_SEARCH_INSTRUCTION, dim=32)
    np.testing.assert_array_equal(vectors, expected.embeddings.numpy())
    single = tiny_text_embedder.encode(QUERIES[0], prompt_name="query", truncate_dim=32)
    assert single.shape == (32,)
    np.testing.assert_allclose(single, vectors[0], atol=1e-6)
    tensor = tiny_text_embedder.encode(DOCUMENTS, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (2, tiny_text_embedder.hidden_size)
    assert torch.equal(tensor, tiny_text_embedder.embed(DOCUMENTS).embeddings)


# ----------------------------------------------------------------------- progress bar
def test_progress_bar_on_request_and_off_by_flag(tiny_text_embedder, capsys):
    texts = [f"text number {i}" for i in range(7)]
    tiny_text_embedder.embed(texts, show_progress_bar=True)
    err = capsys.readouterr().err
    assert "embedding" in err and "7/7" in err
    tiny_text_embedder.embed(texts, show_progress_bar=False)
    tiny_text_embedder.embed(texts)  # auto: a short call, and pytest's stderr is no terminal
    assert capsys.readouterr().err == ""


def test_progress_bar_auto_draws_on_a_terminal_from_the_threshold(tiny_text_model_dir):
    """A real run on a pseudo-terminal: 999 inputs draw nothing, PROGRESS_BAR_MIN_ITEMS do."""
    script = textwrap.dedent(
        f"""
        import sys
        from qwen3_embed import Embedder
        from qwen3_embed.embedder import PROGRESS_BAR_MIN_ITEMS
        embedder = Embedder.from_pretrained({str(tiny_text_model_dir)!r}, device="cpu")
        texts = ["a"] * PROGRESS_BAR_MIN_ITEMS
        embedder.embed(texts[:-1])
        print("MARK", PROGRESS_BAR_MIN_ITEMS, file=sys.stderr, flush=True)
        embedder.embed(texts)
        print("MARK", file=sys.stderr, flush=True)
        embedder.embed(texts, show_progress_bar=False)
        print("MARK", file=sys.stderr, flush=True)
        """
    )
    leader, follower = pty.openpty()
    # A terminal has a size (a fresh pty is 0 x 0, on which tqdm draws an empty bar).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=120) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    below, auto, off, _ = b"".join(chunks).decode(errors="replace").split("MARK")
    threshold = int(auto.split()[0])
    assert "embedding" not in below
    assert "embedding" in auto and f"{threshold}/{threshold}" in auto
    assert "embedding" not in off


def test_progress_bar_auto_draws_in_a_jupyter_kernel(tiny_text_model_dir, monkeypatch, tmp_path):
    """A real kernel (stderr is a cell's output there, not a TTY): the bar shows from the
    threshold on, and not below it."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            "from qwen3_embed import Embedder\n"
            "from qwen3_embed.embedder import PROGRESS_BAR_MIN_ITEMS as N\n"
            f"embedder = Embedder.from_pretrained({str(tiny_text_model_dir)!r}, device='cpu')"
        ),
        nbformat.v4.new_code_cell("embedder.embed(['a'] * N); print(N)"),
        nbformat.v4.new_code_cell("embedder.embed(['a'] * (N - 1)); None"),
    ]
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()

    def text(cell, name: str) -> str:
        return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == name)

    threshold = int(text(notebook.cells[1], "stdout"))
    assert "embedding" in text(notebook.cells[1], "stderr")
    assert f"{threshold}/{threshold}" in text(notebook.cells[1], "stderr")
    assert "embedding" not in text(notebook.cells[2], "stderr")
