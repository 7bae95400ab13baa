"""The official reference implementations, read at test time from checkouts OUTSIDE this repo.

Parity tests run the official code itself, not a restatement of it: the text reranker's is the
"Reranker Model / Transformers usage" code block of QwenLM/Qwen3-Embedding's README.md
(extracted from the checkout's README when the test runs), the VL reranker's is
`src/models/qwen3_vl_reranker.py` of QwenLM/Qwen3-VL-Embedding (imported from the checkout).

Point these variables at a checkout (a work tree, or a git directory without one, read with
`git show HEAD:<path>`):

    QWEN3_EMBEDDING_CHECKOUT     git clone https://github.com/QwenLM/Qwen3-Embedding
    QWEN3_VL_EMBEDDING_CHECKOUT  git clone https://github.com/QwenLM/Qwen3-VL-Embedding

`.ci/run` points them at snapshots of both (at the commits below) where the machine holds them; CI reaches no code host, so it never clones. Without the variable the parity tests are skipped
(saying how to run them); with it set, a missing file is a failure, never a skip.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

CHECKOUTS = {
    "Qwen3-Embedding": ("QWEN3_EMBEDDING_CHECKOUT", "f4ad0c434c0e3534494e26a4a6bdfd8ab1431968"),
    "Qwen3-VL-Embedding": (
        "QWEN3_VL_EMBEDDING_CHECKOUT",
        "8ce3aab1fbcc7b7143b094f0b2005dd89e7246b9",
    ),
}


def official_file(repo: str, path: str) -> str:
    variable, commit = CHECKOUTS[repo]
    location = os.environ.get(variable)
    if not location:
        pytest.skip(
            f"parity with the official code needs a checkout of QwenLM/{repo}: "
            f"git clone https://github.com/QwenLM/{repo} DIR (tested at {commit[:7]}) and set "
            f"{variable}=DIR"
        )
    root = Path(location)
    if (root / path).is_file():
        return (root / path).read_text(encoding="utf-8")
    shown = subprocess.run(
        ["git", f"--git-dir={root}", "show", f"HEAD:{path}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if shown.returncode != 0:
        pytest.fail(f"{variable}={location} holds no {path}: {shown.stderr.strip()}")
    return shown.stdout


def text_reranker_block() -> str:
    """The Python code block under "### Reranker Model" / "#### Transformers Usage"."""
    readme = official_file("Qwen3-Embedding", "README.md")
    section = readme.split("### Reranker Model", 1)
    if len(section) != 2:
        pytest.fail("the official README has no '### Reranker Model' section")
    match = re.search(r"#### Transformers Usage\s*```python\n(.*?)```", section[1], re.DOTALL)
    if match is None:
        pytest.fail("the official README's reranker section has no Transformers code block")
    return match.group(1)


# The block loads this hub id; the test runs it on a tiny local checkpoint instead.
TEXT_BLOCK_MODEL_ID = '"Qwen/Qwen3-Reranker-0.6B"'


def run_text_reranker_block(model_dir: Path) -> dict:
    """Execute the official block (its own example pairs included) on `model_dir`; returns its
    namespace: `format_instruction`, `process_inputs`, `compute_logits`, `max_length`, ..."""
    block = text_reranker_block()
    if block.count(TEXT_BLOCK_MODEL_ID) < 2:
        pytest.fail(
            f"the official block no longer loads {TEXT_BLOCK_MODEL_ID} (tokenizer and model)"
        )
    code = block.replace(TEXT_BLOCK_MODEL_ID, repr(str(model_dir)))
    namespace: dict = {"__name__": "official_text_reranker"}
    exec(compile(code, "Qwen3-Embedding/README.md#reranker", "exec"), namespace)  # noqa: S102
    return namespace


def official_vl_reranker_module() -> ModuleType:
    source = official_file("Qwen3-VL-Embedding", "src/models/qwen3_vl_reranker.py")
    name = "official_qwen3_vl_reranker"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(
        compile(source, "Qwen3-VL-Embedding/src/models/qwen3_vl_reranker.py", "exec"),
        module.__dict__,
    )  # noqa: S102
    sys.modules[name] = module
    return module
