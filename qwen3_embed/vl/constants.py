"""The official embedder's constants (QwenLM/Qwen3-VL-Embedding `src/models/qwen3_vl_embedding.py`,
shipped in the hub repos as `scripts/qwen3_vl_embedding.py`)."""

from __future__ import annotations

from ..registry import VL_DEFAULT_SYSTEM_PROMPT

IMAGE_PATCH_SIZE = 16  # passed to qwen_vl_utils as `image_patch_size`
IMAGE_FACTOR = IMAGE_PATCH_SIZE * 2  # patch x spatial merge: resized sides are multiples of 32
TEMPORAL_PATCH = 2  # frames per temporal patch of a video
MIN_PIXELS = 4 * IMAGE_FACTOR * IMAGE_FACTOR  # 4,096
MAX_PIXELS = 1800 * IMAGE_FACTOR * IMAGE_FACTOR  # 1,843,200
FPS = 1  # frames sampled per second of a video file
# Frames sampled at most from a video file (unless the item says otherwise); a frame list with
# more frames is sampled down to this many, a shorter one is kept as it is.
MAX_FRAMES = 64
FRAME_MAX_PIXELS = 768 * IMAGE_FACTOR * IMAGE_FACTOR
MAX_TOTAL_PIXELS = 10 * FRAME_MAX_PIXELS  # `total_pixels` of a frame-list video (not of a file)
DEFAULT_INSTRUCTION = VL_DEFAULT_SYSTEM_PROMPT  # "Represent the user's input."
