"""Loading: sources (local dir, fsspec URL, hub id offline), families, the registry, the CLI,
and the layer rule (the core never imports Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
import torch

from qwen3_embed import SEED_MODELS, Embedder, UnsupportedModelError
from qwen3_embed.registry import lookup

REPO = Path(__file__).resolve().parents[2]


def test_importing_the_core_does_not_load_ray():
    code = "import sys, qwen3_embed, qwen3_embed.cli; print('ray' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_importing_the_core_is_light_until_a_model_is_needed():
    code = (
        "import sys, qwen3_embed; from qwen3_embed import InputError, SEED_MODELS; "
        "light = 'torch' not in sys.modules; qwen3_embed.Embedder; print(light, 'torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["True", "True"]


def test_fsspec_url_source_is_copied_once_and_loads(
    tiny_text_model_dir, tiny_text_embedder, tmp_path, monkeypatch
):
    monkeypatch.setenv("QWEN3_EMBED_CACHE", str(tmp_path / "cache"))
    memory = fsspec.filesystem("memory")
    for file in Path(tiny_text_model_dir).iterdir():
        memory.pipe(f"/models/tiny/{file.name}", file.read_bytes())
    embedder = Embedder.from_pretrained("memory://models/tiny", device="cpu")
    expected = tiny_text_embedder.embed(["hello world"]).embeddings
    assert torch.allclose(embedder.embed(["hello world"]).embeddings, expected, atol=1e-6)
    assert embedder.preparer.model_dir.is_relative_to(tmp_path / "cache")
    # A second load reuses the cached copy even after the remote is gone.
    memory.rm("/models/tiny", recursive=True)
    assert Embedder.from_pretrained("memory://models/tiny", device="cpu").hidden_size == 64


def test_unreachable_hub_names_the_offline_options(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    with pytest.raises(OSError, match="make-tiny-model") as info:
        Embedder.from_pretrained("Qwen/Qwen3-Embedding-0.6B")
    assert "--model DIR" in str(info.value)


def test_missing_local_directory_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Embedder.from_pretrained(str(tmp_path / "nope"))


def test_unknown_model_type_is_a_clear_error(tiny_text_model_dir, tmp_path):
    broken = tmp_path / "llama"
    broken.mkdir()
    config = json.loads((Path(tiny_text_model_dir) / "config.json").read_text())
    config["model_type"] = "llama"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        UnsupportedModelError, match="'llama' is not supported; valid values are: qwen3"
    ):
        Embedder.from_pretrained(broken)


def test_family_comes_from_config_not_name(tiny_text_model_dir, tmp_path):
    misleading = tmp_path / "Qwen3-VL-Embedding-looking-name"
    misleading.symlink_to(tiny_text_model_dir, target_is_directory=True)
    assert Embedder.from_pretrained(misleading).family == "text"


def test_registry_lists_the_five_seeds():
    assert len(SEED_MODELS) == 5
    assert lookup("qwen/qwen3-embedding-8b").hidden_size == 4096
    assert lookup("Qwen/Qwen3-VL-Embedding-2B").min_dim == 64
    assert lookup("Qwen/Qwen3-Embedding-0.6B").min_dim == 32
    assert lookup("someone/else") is None


def test_auto_device_and_dtype_on_this_machine(tiny_text_embedder):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert tiny_text_embedder.device.type == expected
    if expected == "cpu":
        assert tiny_text_embedder.backend.dtype == torch.float32


def test_unknown_dtype_lists_valid_values(tiny_text_model_dir):
    with pytest.raises(ValueError, match="valid values are: auto"):
        Embedder.from_pretrained(tiny_text_model_dir, dtype="int3")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "qwen3_embed", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


def test_cli_make_tiny_model_and_models(tmp_path):
    made = _cli("make-tiny-model", str(tmp_path / "tiny"))
    assert made.returncode == 0, made.stderr
    assert "RANDOM-WEIGHT" in made.stdout
    embedder = Embedder.from_pretrained(tmp_path / "tiny")
    assert embedder.hidden_size == 256  # wide enough for the README's dim=256 examples
    assert embedder.embed(["hi"], dim=256).embeddings.shape == (1, 256)
    listed = _cli("models", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {row["model"] for row in json.loads(listed.stdout)} == set(SEED_MODELS)


@pytest.mark.parametrize(
    "source", ["no-such-dir/", "./no-such-dir", "models/tiny/qwen3", "~/no-such-dir", "bad name"]
)
def test_a_missing_path_is_not_reported_as_a_hub_failure(source, monkeypatch, tmp_path):
    """A source that cannot be a hub id means a local directory that is not there: say so, with
    the directory relative paths resolve against, and never blame the hub."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such local directory") as info:
        Embedder.from_pretrained(source)
    assert "hub" not in str(info.value).lower()
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("source", ["Qwen/Qwen3-Embedding-0.6B", "bert-base-uncased"])
def test_hub_shaped_sources_still_go_to_the_hub(source):
    from qwen3_embed.source import looks_like_path

    assert not looks_like_path(source)
