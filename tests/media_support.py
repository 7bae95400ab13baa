"""Media files for tests of the VL paths (core and serving alike)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np


def write_mp4(
    path: Path,
    frames: np.ndarray,
    fps: int,
    codec: str = "mpeg4",
    options: dict[str, str] | None = None,
) -> None:
    """(T, H, W, 3) uint8 -> an mp4 file (`options`: the encoder's, e.g. {"g": "25"} for a
    keyframe every 25 frames, {"bf": "2"} for B-frames)."""
    import av  # the [vl] extra; only its tests call this

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = dict(options or {})
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())


def smooth_clip(frames: int = 12) -> np.ndarray:
    """(frames, 48, 64, 3) uint8 gradients drifting frame by frame: a smooth clip (noise would
    make the encoder's job and a test's tolerance meaningless)."""
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    return np.stack(
        [
            np.stack([np.add.outer(ramp[:48] * 0.5, ramp * 0.5 + 8 * t) % 256] * 3, axis=-1)
            for t in range(frames)
        ]
    ).astype(np.uint8)


def decord_like_reader(element: dict):
    """qwen-vl-utils' decord/torchcodec reader, decoding with PyAV (this machine has neither):
    lets the official code read video files in tests."""
    import av
    import torch
    from qwen_vl_utils.vision_process import smart_nframes

    path = element["video"].removeprefix("file://")
    with av.open(path) as container:
        stream = container.streams.video[0]
        video_fps = float(stream.average_rate)
        frames = [
            torch.from_numpy(frame.to_ndarray(format="rgb24")) for frame in container.decode(stream)
        ]
    total_frames = len(frames)
    nframes = smart_nframes(element, total_frames=total_frames, video_fps=video_fps)
    idx = torch.linspace(0, total_frames - 1, nframes).round().long().tolist()
    video = torch.stack(frames).permute(0, 3, 1, 2)[idx]  # (T, C, H, W)
    metadata = dict(
        fps=video_fps, frames_indices=idx, total_num_frames=total_frames, video_backend="decord"
    )
    return video, metadata, nframes / max(total_frames, 1e-6) * video_fps


@contextlib.contextmanager
def official_video_reader():
    """qwen-vl-utils reads video files through `decord_like_reader` while in the block."""
    import pytest
    from qwen_vl_utils import vision_process

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vision_process, "get_video_reader_backend", lambda: "test_av")
        patch.setitem(vision_process.VIDEO_READER_BACKENDS, "test_av", decord_like_reader)
        yield
