"""Videos, read and sampled exactly as the official embedder feeds them to the processor.

- A frame list is kept as it is when it has at most `MAX_FRAMES` frames, and sampled down to
  `np.linspace(0, n - 1, MAX_FRAMES, dtype=int)` beyond (the official `sample_frames`; the
  embedder's own `MAX_FRAMES`, never the item's), then handed to `qwen_vl_utils.fetch_video` with
  `total_pixels=MAX_TOTAL_PIXELS` (which pads an odd count by repeating the last frame).
- A video file (path, URL, bytes) is sampled at `fps` frame/s, at most `max_frames` frames (the
  item's values, else `FPS` / `MAX_FRAMES`; `qwen_vl_utils.smart_nframes`, indices
  `linspace(0, total - 1, n).round()`), and resized as
  `qwen_vl_utils.fetch_video` does (no `total_pixels` is given for files, so its default applies).
  qwen-vl-utils reads files with torchcodec or decord (its torchvision fallback no longer exists in
  torchvision >= 0.24); here PyAV decodes them, streaming, so only the sampled frames are kept.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .constants import (
    FPS,
    IMAGE_FACTOR,
    IMAGE_PATCH_SIZE,
    MAX_FRAMES,
    MAX_TOTAL_PIXELS,
    TEMPORAL_PATCH,
)
from .limits import ItemBudget
from .media import MediaOptions, check_pixels, is_remote_url, load_image, local_path, read_bytes


@dataclass
class Video:
    """Frames ready for the processor (called with do_resize=False, do_sample_frames=False)."""

    frames: torch.Tensor  # (T, C, H, W) float32, values 0..255, H and W multiples of 32
    metadata: dict[str, Any]  # fps, frames_indices, total_num_frames: the processor's timestamps


def load_video(
    source: Any,
    options: MediaOptions,
    budget: ItemBudget,
    fps: float | None = None,
    max_frames: int | None = None,
) -> Video:
    """`fps` / `max_frames` (per item) apply to files only, as in the official `format_model_input`."""
    if isinstance(source, (list, tuple)):
        return video_from_frames(source, options, budget)
    return video_from_file(source, options, budget, fps or FPS, max_frames or MAX_FRAMES)


def video_tokens(num_frames: int, height: int, width: int) -> int:
    """Vision tokens of a resized clip: temporal patches of 2 frames x merged 32x32 blocks."""
    return -(-num_frames // TEMPORAL_PATCH) * (height // IMAGE_FACTOR) * (width // IMAGE_FACTOR)


# ----------------------------------------------------------------------------- frame lists
def sample_frame_positions(num_frames: int, max_frames: int = MAX_FRAMES) -> list[int]:
    """The official `sample_frames`: every frame when there are at most `max_frames`, else
    `max_frames` positions spread evenly (first and last included)."""
    if num_frames <= max_frames:
        return list(range(num_frames))
    return np.linspace(0, num_frames - 1, max_frames, dtype=int).tolist()


def video_from_frames(frames: Sequence[Any], options: MediaOptions, budget: ItemBudget) -> Video:
    from qwen_vl_utils.vision_process import fetch_video

    if len(frames) == 0:
        raise InputError("video frame list is empty")
    positions = sample_frame_positions(len(frames))
    loaded = {}
    for position in positions:  # only the sampled frames are ever read
        try:
            loaded[position] = load_image(frames[position], options)
            budget.add_pixels(loaded[position].width * loaded[position].height)
        except InputError as error:
            raise InputError(f"video frame {position}: {error.reason}") from None
    sizes = {image.size for image in loaded.values()}
    if len(sizes) > 1:
        raise InputError(f"video frames must all have the same size; got {sorted(sizes)}")
    element = {
        "type": "video",
        "video": [loaded[position] for position in positions],
        "total_pixels": MAX_TOTAL_PIXELS,
    }
    try:
        (video, metadata), _ = fetch_video(
            element,
            image_patch_size=IMAGE_PATCH_SIZE,
            return_video_sample_fps=True,
            return_video_metadata=True,
        )
    except (ValueError, OSError) as error:  # an aspect ratio over 200; a lazy PIL frame failing
        raise InputError(f"video frames cannot be used: {error}") from None
    budget.add_tokens(video_tokens(*video.shape[:1], *video.shape[2:]) + 2)
    return Video(video, metadata)


# ----------------------------------------------------------------------------- files
def _opener(source: Any, options: MediaOptions) -> Callable[[], Any]:
    """A function that opens the video afresh each call (local files are streamed, not read)."""
    import av

    is_path = isinstance(source, os.PathLike) or (
        isinstance(source, str) and not source.startswith("data:") and not is_remote_url(source)
    )
    if is_path:
        path = local_path(source, options)
        return lambda: av.open(path)
    data = read_bytes(source, options)
    return lambda: av.open(io.BytesIO(data))


def _target_size(num_frames: int, height: int, width: int) -> tuple[int, int]:
    """`qwen_vl_utils.fetch_video`'s resize rule for an element without total_pixels/max_pixels."""
    from qwen_vl_utils.vision_process import (
        FRAME_FACTOR,
        MODEL_SEQ_LEN,
        VIDEO_MAX_TOKEN_NUM,
        VIDEO_MIN_TOKEN_NUM,
        smart_resize,
    )

    min_pixels = VIDEO_MIN_TOKEN_NUM * IMAGE_FACTOR * IMAGE_FACTOR
    total_pixels = MODEL_SEQ_LEN * IMAGE_FACTOR * IMAGE_FACTOR * 0.9
    max_pixels = max(
        min(
            VIDEO_MAX_TOKEN_NUM * IMAGE_FACTOR * IMAGE_FACTOR,
            total_pixels / num_frames * FRAME_FACTOR,
        ),
        int(min_pixels * 1.05),
    )
    return smart_resize(
        height, width, factor=IMAGE_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels
    )


def _frame_indices(total_frames: int, video_fps: float, fps: float, max_frames: int) -> list[int]:
    from qwen_vl_utils.vision_process import smart_nframes

    try:
        num_frames = smart_nframes(
            {"fps": fps, "max_frames": max_frames}, total_frames=total_frames, video_fps=video_fps
        )
    except ValueError:
        raise InputError(f"video has {total_frames} frame(s); at least 2 are needed") from None
    return torch.linspace(0, total_frames - 1, num_frames).round().long().tolist()


def _frame_rate(stream: Any) -> float:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate is not None and rate > 0:
            return float(rate)
    raise InputError("the video's frame rate cannot be determined")


def _count_frames(open_container: Callable[[], Any]) -> int:
    """Frames counted from packets, for containers whose header does not say."""
    with open_container() as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _decode_resized(
    open_container: Callable[[], Any], indices: list[int], size: tuple[int, int]
) -> tuple[dict[int, torch.Tensor], int]:
    """Decode in presentation order, keeping the frames at `indices`, each resized to `size`."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    wanted, last = set(indices), max(indices)
    kept: dict[int, torch.Tensor] = {}
    count = 0
    with open_container() as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if count in wanted:
                # (H, W, 3) -> (1, C, H, W) uint8
                pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)[None]
                # Frame by frame to bound memory; the same bicubic antialiased resize that
                # fetch_video applies to the stacked clip (per frame, so the result is identical).
                kept[count] = TF.resize(
                    pixels,
                    list(size),
                    interpolation=InterpolationMode.BICUBIC,
                    antialias=True,
                )[0]
            count += 1
            if count > last:
                break
    return kept, count


def video_from_file(
    source: Any, options: MediaOptions, budget: ItemBudget, fps: float, max_frames: int
) -> Video:
    import av

    try:
        open_container = _opener(source, options)
        with open_container() as container:
            if not container.streams.video:
                raise InputError("the media has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            check_pixels(width, height, options, "a video frame")
            video_fps = _frame_rate(stream)
            total_frames = stream.frames
        if total_frames <= 0:
            total_frames = _count_frames(open_container)
        for _ in range(2):
            indices = _frame_indices(total_frames, video_fps, fps, max_frames)
            size = _target_size(len(indices), height, width)
            # Both limits are known before a frame is decoded: check them first.
            budget.check_pixels(len(set(indices)) * width * height)
            budget.check_tokens(video_tokens(len(indices), *size) + 2)
            kept, decoded = _decode_resized(open_container, indices, size)
            if len(kept) == len(set(indices)):
                break
            total_frames = decoded  # the header overstated the frame count: sample the real ones
        else:
            raise InputError("the video's frames could not be decoded")
    except InputError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as error:
        raise InputError(f"could not decode the video ({error})") from None
    budget.add_pixels(len(set(indices)) * width * height)
    budget.add_tokens(video_tokens(len(indices), *size) + 2)
    frames = torch.stack([kept[index] for index in indices]).float()  # (T, C, H, W)
    metadata = {
        "fps": video_fps,
        "frames_indices": indices,
        "total_num_frames": total_frames,
        "video_backend": "pyav",
    }
    return Video(frames, metadata)
