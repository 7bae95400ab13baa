"""Video decoding (qwen3_embed/vl/video.py): sampled frames reached by seeking, bounded work,
the item's decode budget.
The test media (`media`) are a session fixture of tests/core/conftest.py."""

from __future__ import annotations

import numpy as np
import pytest
from media_support import write_mp4

pytest.importorskip("torchvision")
pytest.importorskip("qwen_vl_utils")
av = pytest.importorskip("av")
from qwen3_embed import (  # noqa: E402
    DecodeLimitError,
    InputError,
)
from qwen3_embed.vl.limits import ItemBudget  # noqa: E402
from qwen3_embed.vl.media import MediaOptions  # noqa: E402


def test_long_videos_are_decoded_with_bounded_work(tiny_vl_embedder, media, monkeypatch):
    """The red-team's clip: many static frames (cheap to store, so every size limit passes).
    Sampling seeks to the keyframe before each sampled frame instead of decoding every frame up
    to the last one; a video whose keyframes are too far apart for that is refused past the
    item's decode budget (`decode_limit_exceeded`: a 413 on the API, an error row in a job)."""
    from qwen3_embed.vl.video import load_video

    static = np.full((6000, 32, 32, 3), 90, dtype=np.uint8)  # 4 minutes at 25 fps
    seekable, one_keyframe = media.dir / "static-g25.mp4", media.dir / "static-1-keyframe.mp4"
    write_mp4(seekable, static, fps=25, options={"g": "25"})
    write_mp4(
        one_keyframe, static, fps=25, codec="libx264", options={"g": "100000", "sc_threshold": "0"}
    )

    budget = ItemBudget(10**12, 10**9, max_decoded_frames=10**9)
    video = load_video(str(seekable), MediaOptions(), budget)
    indices = video.metadata["frames_indices"]
    assert len(indices) == 64 and indices[-1] == 5999 and video.metadata["total_num_frames"] == 6000
    # At most one keyframe interval per sampled frame, not the 6000 frames up to the last one.
    assert 64 <= budget.decoded_frames <= 64 * 25, budget.decoded_frames

    budget = ItemBudget(10**12, 10**9, max_decoded_frames=10**9)
    load_video(str(one_keyframe), MediaOptions(), budget)
    assert budget.decoded_frames == 6000  # nothing to seek to: every frame is decoded

    impl = tiny_vl_embedder.preparer.impl
    monkeypatch.setattr(impl, "media_options", MediaOptions(max_decoded_frames=2000))
    results = tiny_vl_embedder.prepare_each(["fine", {"video": str(one_keyframe)}])
    error = results[1]
    assert isinstance(error, DecodeLimitError) and error.code == "decode_limit_exceeded"
    assert str(error).startswith("input[1]: video: sampling the item's videos needs more than 2000")
    assert not isinstance(results[0], InputError)
    assert not isinstance(tiny_vl_embedder.prepare_each([{"video": str(seekable)}])[0], InputError)
    monkeypatch.setattr(impl, "media_options", MediaOptions(max_decode_s=1e-9))
    with pytest.raises(DecodeLimitError, match=r"video: reading the item's videos took more than"):
        tiny_vl_embedder.prepare([{"video": str(seekable)}])
