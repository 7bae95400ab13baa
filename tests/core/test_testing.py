"""The tiny checkpoints (qwen3_embed/testing) through the CLI: a loadable tiny VL model."""

from __future__ import annotations

import json

import pytest
from PIL import Image

pytest.importorskip("torchvision")
pytest.importorskip("qwen_vl_utils")
av = pytest.importorskip("av")
from qwen3_embed import (  # noqa: E402
    Preparer,
)


def test_cli_builds_a_loadable_tiny_vl_model(tmp_path):
    from qwen3_embed.cli import main

    assert main(["make-tiny-model", str(tmp_path / "vl"), "--family", "vl"]) == 0
    config = json.loads((tmp_path / "vl" / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl"
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    assert config["vision_config"]["deepstack_visual_indexes"]
    preparer = Preparer.from_pretrained(tmp_path / "vl")
    assert preparer.info.family == "vl"
    assert preparer.prepare(["hello", {"image": Image.new("RGB", (64, 64))}])
