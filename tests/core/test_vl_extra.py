"""The `[vl]` extra (qwen3_embed/vl/extra.py): a VL model without it names the install command;
the text path works without it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("qwen_vl_utils")
av = pytest.importorskip("av")
from qwen3_embed import (  # noqa: E402
    Embedder,
    MissingExtraError,
    Preparer,
)


# --------------------------------------------------------------------------- packaging
def test_vl_model_without_the_extra_names_the_install_command(tiny_vl_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "qwen_vl_utils", None)  # import qwen_vl_utils -> ImportError
    with pytest.raises(
        MissingExtraError, match=r"missing: qwen-vl-utils.*pip install 'qwen3-embed\[vl\]'"
    ):
        Embedder.from_pretrained(tiny_vl_model_dir, device="cpu")
    with pytest.raises(MissingExtraError):
        Preparer.from_pretrained(tiny_vl_model_dir)


def test_text_path_works_without_the_extra(tiny_vl_model_dir, tmp_path):
    """In a fresh interpreter where torchvision, qwen-vl-utils and av cannot be imported."""
    script = textwrap.dedent(
        """
        import sys
        BLOCKED = ("torchvision", "qwen_vl_utils", "av")
        for name in BLOCKED:
            sys.modules[name] = None  # import fails, find_spec says "not installed"
        import qwen3_embed
        from qwen3_embed import Embedder, MissingExtraError
        from qwen3_embed.testing import make_tiny_text_model
        embedder = Embedder.from_pretrained(make_tiny_text_model(sys.argv[1]), device="cpu")
        assert embedder.embed(["hello"]).embeddings.shape == (1, 64)
        try:
            Embedder.from_pretrained(sys.argv[2], device="cpu")
        except MissingExtraError as error:
            assert "pip install 'qwen3-embed[vl]'" in str(error), error
        else:
            raise SystemExit("a VL model loaded without the [vl] extra")
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "text"), str(tiny_vl_model_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
