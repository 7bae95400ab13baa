"""Per-item media limits (qwen3_embed/vl/limits.py): media per item, the item's pixels and
vision tokens against max_length.
The test media (`media`) are a session fixture of tests/core/conftest.py."""

from __future__ import annotations

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("qwen_vl_utils")
av = pytest.importorskip("av")
from qwen3_embed import (  # noqa: E402
    Embedder,
    InputError,
    InputTooLongError,
    Preparer,
)
from qwen3_embed.vl.media import MediaOptions  # noqa: E402


def test_per_item_media_limits(tiny_vl_embedder, tiny_vl_model_dir, media, monkeypatch):
    impl = tiny_vl_embedder.preparer.impl
    monkeypatch.setattr(impl, "media_options", MediaOptions(max_media_per_item=2))
    assert tiny_vl_embedder.prepare([{"image": [media.photo], "video": media.frames}])
    with pytest.raises(
        InputError,
        match=r"input\[0\]: the item has 2 image\(s\) and 1 video\(s\), more than the limit of 2 media per item",
    ):
        tiny_vl_embedder.prepare([{"image": [media.photo, media.photo], "video": media.frames}])
    # photo 150x100 = 15,000 decoded pixels: two fit in 30,000, three do not
    monkeypatch.setattr(impl, "media_options", MediaOptions(max_item_pixels=30_000))
    assert tiny_vl_embedder.prepare([{"image": [media.photo, media.photo]}])
    with pytest.raises(
        InputError, match=r"input\[0\]: image\[2\]: the item's media add up to more than 30000"
    ):
        tiny_vl_embedder.prepare([{"image": [media.photo] * 3}])
    with pytest.raises(InputError, match=r"video: the item's media add up to more than 30000"):
        tiny_vl_embedder.prepare([{"video": media.clip_path, "max_frames": 12, "fps": 4}])
    # Vision tokens: 100x150 -> 15 tokens + 2 per image; the item is refused before the processor
    # runs, whether truncation is on or off, as soon as its media alone pass max_length.
    monkeypatch.undo()
    short = Embedder(
        Preparer.from_model_dir("tiny-vl", tiny_vl_model_dir, tiny_vl_embedder.info, 60),
        tiny_vl_embedder.backend,
    )
    assert short.prepare([{"image": [media.photo, media.photo]}])
    for truncate in (True, False):
        with pytest.raises(
            InputTooLongError,
            match=r"input\[0\]: image\[3\]: the item's media need at least 68 tokens, more than max_length=60",
        ):
            short.prepare([{"image": [media.photo] * 4}], truncate=truncate)
