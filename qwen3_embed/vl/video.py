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
  torchvision >= 0.24); here PyAV reads them. Frame `i` is the i-th frame in presentation order,
  as those readers count: the packets' timestamps are read first (demuxing, no decoding), then
  each sampled frame is reached by seeking to the keyframe at or before its timestamp and
  decoding forward to it, so a long video costs about (sampled frames) x (keyframe interval)
  decodes, not every frame up to the last sampled one. A file whose timestamps cannot be trusted
  (missing, repeated) is decoded in order from its start instead. Either way each decoded frame
  counts against the item's budget (`ItemBudget.add_decoded_frame`: frames and seconds).
"""

from __future__ import annotations

import bisect
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


@dataclass(frozen=True)
class _Timeline:
    """A video stream's frames as its packets say, read without decoding."""

    count: int  # packets that carry a frame (what a header-less container's frame count is)
    pts: list[int] | None  # each frame's timestamp in presentation order; None: not trustworthy
    keyframes: list[int]  # the keyframes' timestamps, sorted


def _scan(open_container: Callable[[], Any], budget: ItemBudget) -> _Timeline:
    """Demux the video stream (no decoding: about 100x cheaper per frame) for its frame count,
    timestamps and keyframes."""
    count, trusted = 0, True
    pts: list[int] = []
    keyframes: list[int] = []
    with open_container() as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.size <= 0:
                continue  # the demuxer's end-of-stream packet
            count += 1
            if count % 4096 == 0:
                budget.check_decode_time()
            if packet.pts is None or packet.is_discard:
                trusted = False  # no timestamp to seek to / a frame the decoder drops
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keyframes.append(packet.pts)
    pts.sort()
    keyframes.sort()
    if not trusted or not keyframes or len(set(pts)) != len(pts):
        return _Timeline(count, None, keyframes)
    return _Timeline(count, pts, keyframes)


def _resized(frame: Any, size: tuple[int, int]) -> torch.Tensor:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    # (H, W, 3) -> (1, C, H, W) uint8
    pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)[None]
    # Frame by frame to bound memory; the same bicubic antialiased resize that fetch_video
    # applies to the stacked clip (per frame, so the result is identical).
    return TF.resize(pixels, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)[0]


def _decode_by_seeking(
    open_container: Callable[[], Any],
    indices: list[int],
    size: tuple[int, int],
    timeline: _Timeline,
    budget: ItemBudget,
) -> dict[int, torch.Tensor] | None:
    """The frames at `indices`, each reached from the keyframe at or before it (frames that
    follow a keyframe in presentation order never depend on frames before it, so they decode
    exactly as in a decode from the start). Consecutive targets within one keyframe interval
    are decoded in one pass. None when the decoder does not meet the timestamps the packets
    promised (then the caller decodes in order)."""
    assert timeline.pts is not None
    kept: dict[int, torch.Tensor] = {}
    with open_container() as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = None
        position: int | None = None  # timestamp of the last decoded frame
        for index in sorted(set(indices)):
            target = timeline.pts[index]
            at = bisect.bisect_right(timeline.keyframes, target) - 1
            keyframe = timeline.keyframes[at] if at >= 0 else None
            if frames is None and (keyframe is None or at == 0):
                frames = container.decode(stream)  # from the start: nothing to skip
            elif frames is None or (
                keyframe is not None and position is not None and keyframe > position
            ):
                container.seek(keyframe, stream=stream, backward=True, any_frame=False)
                frames = container.decode(stream)
            for frame in frames:
                budget.add_decoded_frame()
                if frame.pts is None or frame.pts > target:
                    return None  # no timestamps, or the seek landed past the target
                position = frame.pts
                if frame.pts == target:
                    kept[index] = _resized(frame, size)
                    break
            else:
                return None  # the stream ended before the target
    return kept


def _decode_in_order(
    open_container: Callable[[], Any],
    indices: list[int],
    size: tuple[int, int],
    budget: ItemBudget,
) -> tuple[dict[int, torch.Tensor], int]:
    """Decode in presentation order from the start, keeping the frames at `indices`."""
    wanted, last = set(indices), max(indices)
    kept: dict[int, torch.Tensor] = {}
    count = 0
    with open_container() as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            budget.add_decoded_frame()
            if count in wanted:
                kept[count] = _resized(frame, size)
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
        budget.start_decoding()
        timeline = _scan(open_container, budget)
        if total_frames <= 0:
            total_frames = timeline.count
        elif timeline.pts is not None and total_frames > len(timeline.pts):
            total_frames = len(timeline.pts)  # the header overstates: sample the real frames
        for _ in range(2):
            indices = _frame_indices(total_frames, video_fps, fps, max_frames)
            size = _target_size(len(indices), height, width)
            # Both limits are known before a frame is decoded: check them first.
            budget.check_pixels(len(set(indices)) * width * height)
            budget.check_tokens(video_tokens(len(indices), *size) + 2)
            kept = None
            if timeline.pts is not None:
                kept = _decode_by_seeking(open_container, indices, size, timeline, budget)
            if kept is None:
                kept, decoded = _decode_in_order(open_container, indices, size, budget)
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
