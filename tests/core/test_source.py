"""`resolve_model_dir(local_only=True)`: a cheap look at a model already on this machine (the
batch job's "nothing to do" check) that never downloads or copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import fsspec
import pytest

from qwen3_embed.model_info import read_model_info
from qwen3_embed.source import resolve_model_dir

REVISION = "0" * 40


def fake_hub_cache(root: Path, model_id: str, model_dir: Path) -> Path:
    """The hub cache's layout for `model_id` at `main`, holding a copy of `model_dir`."""
    repo = root / f"models--{model_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    snapshot = repo / "snapshots" / REVISION
    shutil.copytree(model_dir, snapshot)
    return snapshot


def test_a_hub_id_comes_from_the_hub_cache_or_not_at_all(
    tiny_text_model_dir, tmp_path, monkeypatch
):
    import huggingface_hub.constants as hub

    snapshot = fake_hub_cache(tmp_path / "hub", "tester/tiny-embedding", tiny_text_model_dir)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    found = resolve_model_dir("tester/tiny-embedding", local_only=True)
    assert found == snapshot and read_model_info(found).hidden_size == 64
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face hub's local cache"):
        resolve_model_dir("tester/elsewhere", local_only=True)
    assert sorted(path.name for path in (tmp_path / "hub").iterdir()) == [
        "models--tester--tiny-embedding"
    ]  # nothing was fetched for the missing one


def test_a_url_comes_from_the_cache_or_not_at_all(tiny_text_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN3_EMBED_CACHE", str(tmp_path / "cache"))
    memory = fsspec.filesystem("memory")
    for file in Path(tiny_text_model_dir).iterdir():
        memory.pipe(f"/local-only/tiny/{file.name}", file.read_bytes())
    try:
        with pytest.raises(FileNotFoundError, match="no complete copy in the cache"):
            resolve_model_dir("memory://local-only/tiny", local_only=True)
        assert not (tmp_path / "cache").exists()  # nothing was copied
        copied = resolve_model_dir("memory://local-only/tiny")
        assert resolve_model_dir("memory://local-only/tiny", local_only=True) == copied
    finally:
        memory.rm("/local-only", recursive=True)
