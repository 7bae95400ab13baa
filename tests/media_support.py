"""Media files for tests of the VL paths (core and serving alike)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """(T, H, W, 3) uint8 -> an mp4 file."""
    import av  # the [vl] extra; only its tests call this

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
