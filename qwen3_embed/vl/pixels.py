"""Media between the CPU stage and the device: resized uint8 pixels, normalised on the device.

The processor turns an image into float32 patches (rescaled, normalised, each image repeated to
fill a temporal patch of 2 frames): 24 bytes per resized pixel, ~44 MB for a 1.8-megapixel image.
Shipping those through Ray's object store (batch job) costs more than the forward pass they
feed. So the CPU stage ships what it resized — uint8 RGB, 3 bytes per pixel, 1/8 of that (videos:
1/4, frames are not repeated) — with each medium's shape, and the backend runs the same
image / video processor (`do_resize=False`) on the device right before the forward pass. The
result is the processor's own output, so the vectors do not change (tests compare both paths).

Keys of `PreparedInput.media` (simple names: they survive `to_row` and the batch job's npz):
`image_pixels` (uint8, every image's (H, W, 3) flattened, concatenated in item order),
`image_shapes` (N, 3: H, W, 3), `image_grid_thw`; `video_pixels` (uint8, every video's
(T, C, H, W) flattened), `video_shapes` (N, 4: T, C, H, W), `video_grid_thw`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

IMAGE_KEYS = ("image_pixels", "image_shapes", "image_grid_thw")
VIDEO_KEYS = ("video_pixels", "video_shapes", "video_grid_thw")
MEDIA_KEYS = IMAGE_KEYS + VIDEO_KEYS


def pack_media(images: Sequence[Any], videos: Sequence[Any], encoded: Any) -> dict[str, np.ndarray]:
    """Resized PIL images and `Video`s (frames exact integers 0..255) -> the media arrays."""
    media: dict[str, np.ndarray] = {}
    if images:
        arrays = [np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images]
        media["image_pixels"] = np.concatenate([array.reshape(-1) for array in arrays])
        media["image_shapes"] = np.asarray([array.shape for array in arrays], dtype=np.int64)
        media["image_grid_thw"] = encoded["image_grid_thw"].numpy()
    if videos:
        clips = [video.frames.to(torch.uint8).numpy() for video in videos]
        media["video_pixels"] = np.concatenate([clip.reshape(-1) for clip in clips])
        media["video_shapes"] = np.asarray([clip.shape for clip in clips], dtype=np.int64)
        media["video_grid_thw"] = encoded["video_grid_thw"].numpy()
    return media


def _split(pixels: np.ndarray, shapes: np.ndarray) -> list[np.ndarray]:
    pieces, start = [], 0
    for shape in shapes.tolist():
        size = int(np.prod(shape))
        pieces.append(pixels[start : start + size].reshape(shape))
        start += size
    if start != pixels.size:
        raise ValueError(f"media pixels hold {pixels.size} values, their shapes {start}")
    return pieces


@dataclass(frozen=True)
class StagedMedia:
    """A batch's media on the host, ready for one asynchronous copy each: uint8 pixels (pinned
    when the device is a GPU, so `to(device, non_blocking=True)` does not block the host) and
    the grids the CPU stage computed."""

    images: list[torch.Tensor]  # (H, W, 3) uint8 each, in item order
    videos: list[torch.Tensor]  # (T, C, H, W) uint8 each, in item order
    items: list[dict[str, np.ndarray]]  # the prepared media (their grids are checked)


def stage_media(items: Sequence[dict[str, np.ndarray]], pin: bool = False) -> StagedMedia:
    """Host work of a batch's media (split per medium, pinned on a GPU), done while the previous
    batch runs on the device."""

    def host(array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.pin_memory() if pin else tensor

    images = [
        host(array)
        for item in items
        if "image_pixels" in item
        for array in _split(item["image_pixels"], item["image_shapes"])
    ]
    videos = [
        host(clip)
        for item in items
        if "video_pixels" in item
        for clip in _split(item["video_pixels"], item["video_shapes"])
    ]
    return StagedMedia(images, videos, list(items))


def media_tensors(
    items: Sequence[dict[str, np.ndarray]] | StagedMedia, processor: Any, device: torch.device
) -> dict[str, torch.Tensor]:
    """The batch's media, in item order, as the model takes them: `pixel_values` and
    `pixel_values_videos` normalised on `device` by the processor's own image / video processor,
    with the grids the CPU stage computed (checked against the processor's)."""
    staged = items if isinstance(items, StagedMedia) else stage_media(items)
    out: dict[str, torch.Tensor] = {}
    images = [
        # (C, H, W) uint8, like a PIL input; the copy is asynchronous from pinned memory
        image.to(device, non_blocking=True).permute(2, 0, 1)
        for image in staged.images
    ]
    if images:
        done = processor.image_processor(
            images=images, do_resize=False, return_tensors="pt", device=device
        )
        out["pixel_values"] = done["pixel_values"]
        out["image_grid_thw"] = _same_grid(staged.items, "image_grid_thw", done["image_grid_thw"])
    videos = [
        clip.to(device, non_blocking=True).float()  # the float frames the CPU stage processed
        for clip in staged.videos
    ]
    if videos:
        done = processor.video_processor(
            videos=videos,
            do_resize=False,
            do_sample_frames=False,
            return_tensors="pt",
            device=device,
        )
        out["pixel_values_videos"] = done["pixel_values_videos"]
        out["video_grid_thw"] = _same_grid(staged.items, "video_grid_thw", done["video_grid_thw"])
    return out


def _same_grid(
    items: Sequence[dict[str, np.ndarray]], key: str, computed: torch.Tensor
) -> torch.Tensor:
    """The token count of each item was fixed on the CPU from its grids: the pixels rebuilt here
    must give the very same grids, or the vision features would not fill the pad tokens."""
    shipped = np.concatenate([item[key] for item in items if key in item], axis=0)
    if not np.array_equal(shipped, computed.cpu().numpy()):
        raise ValueError(f"{key} of the shipped pixels differs from the prepared one")
    return torch.from_numpy(shipped)
