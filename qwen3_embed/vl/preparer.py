"""`VLPreparer`: the CPU stage of Qwen3-VL-Embedding (processor only, no weights).

Per item, as the official `Qwen3VLEmbedder` does for a batch: build the conversation, render it
with the processor's chat template (`add_generation_prompt=True`), load and resize the media like
`qwen_vl_utils` (images: `smart_resize` to multiples of 32 within [MIN_PIXELS, MAX_PIXELS]), then
call `Qwen3VLProcessor` with `do_resize=False`. Processing items one at a time gives the same ids
and pixel values as the official batched call (the processor treats each image, video and text on
its own), and lets one bad item fail alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..contracts import InputPreparer, PreparedInput, PrepareResult
from ..errors import InputError, InputTooLongError
from ..model_info import ModelInfo
from .extra import require_vl_extra
from .items import VLItem, conversation, describe_media, parse_item
from .limits import ItemBudget
from .media import MediaOptions
from .pixels import MEDIA_KEYS, pack_media

__all__ = ["MEDIA_KEYS", "VLPreparer"]


class VLPreparer(InputPreparer):
    """Items -> `PreparedInput`s (ids + processed media arrays). `media_options` (public, may be
    replaced) decides which media sources are allowed and how large they may be; the default is
    permissive, for direct library use."""

    def __init__(self, model_dir: Path, info: ModelInfo, media_options: MediaOptions | None = None):
        require_vl_extra()
        from transformers import Qwen3VLProcessor

        self.info = info
        self.media_options = media_options or MediaOptions()
        self.processor = Qwen3VLProcessor.from_pretrained(model_dir, padding_side="right")
        if getattr(self.processor.video_processor, "cap_pixels_per_frame", False) is None:
            # Frames arrive resized (do_resize=False), so the processor's optional per-frame pixel
            # cap never applies; saying so silences its warning that it is not applied.
            self.processor.video_processor.cap_pixels_per_frame = False
        tokenizer = self.processor.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.image_token_id = self.processor.image_token_id
        self.video_token_id = self.processor.video_token_id
        # Tokens the tokenizer adds itself (none for Qwen3-VL); truncation keeps them.
        self.added_tokens = tokenizer.num_special_tokens_to_add()

    def prepare_items(
        self,
        items: Sequence[Any],
        instruction: str | None,
        truncate: bool,
        max_length: int,
        prompt: str | None = None,
    ) -> list[PrepareResult]:
        if prompt is not None:
            # A chat model has no text to prefix: sentence-transformers injects a prompt as the
            # system message, which is where the instruction goes (same `.` rule, see items.py).
            instruction = prompt
        results: list[PrepareResult] = []
        for item in items:
            try:
                results.append(self.prepare_one(item, instruction, truncate, max_length))
            except InputError as error:
                results.append(error)
        return results

    def prepare_one(
        self, item: Any, instruction: str | None, truncate: bool, max_length: int
    ) -> PreparedInput:
        parsed = parse_item(item, instruction)
        limit = self.media_options.max_media_per_item
        if parsed.num_media > limit:
            raise InputError(
                f"the item has {len(parsed.images)} image(s) and {len(parsed.videos)} video(s), "
                f"more than the limit of {limit} media per item"
            )
        prompt = self.processor.apply_chat_template(
            conversation(parsed), add_generation_prompt=True, tokenize=False
        )
        self._check_no_reserved_tokens(prompt, parsed)
        options = self.media_options
        budget = ItemBudget(
            options.max_item_pixels,
            max_length - self.added_tokens,
            options.max_decoded_frames,
            options.max_decode_s,
        )
        media = self._load_media(parsed, budget)
        encoded = self._process(prompt, media, truncation=False, max_length=None)
        input_ids = encoded["input_ids"][0].tolist()
        full_length = len(input_ids)
        if len(input_ids) > max_length:
            if not truncate:
                raise InputTooLongError(
                    f"input has {len(input_ids)} tokens (media included), more than max_length={max_length}; "
                    "enable truncation or shorten it"
                )
            self._check_media_survives(input_ids, max_length)
            encoded = self._process(prompt, media, truncation=True, max_length=max_length)
            input_ids = encoded["input_ids"][0].tolist()
        # uint8 pixels, normalised on the device by the backend (see pixels.py)
        return PreparedInput(
            input_ids=input_ids,
            media=pack_media(**media, encoded=encoded),
            truncated=len(encoded["input_ids"][0]) < full_length,
        )

    def _load_media(self, item: VLItem, budget: ItemBudget) -> dict[str, list[Any]]:
        """Videos then images, in the item's order (the order of their pad tokens in the prompt);
        an error names the medium (`image[2]: ...`) and is raised before the rest is read."""
        from .video import load_video

        labels = iter(describe_media(item))
        videos = []
        for video in item.videos:
            label = next(labels)
            try:
                videos.append(
                    load_video(video, self.media_options, budget, item.fps, item.max_frames)
                )
            except InputError as error:
                raise type(error)(f"{label}: {error.reason}") from None
        images = []
        for image in item.images:
            label = next(labels)
            try:
                images.append(self._load_image(image, budget))
            except InputError as error:
                raise type(error)(f"{label}: {error.reason}") from None
            except (ValueError, OSError) as error:  # aspect ratio over 200; lazy PIL data failing
                raise InputError(f"{label}: cannot be used ({error})") from None
        return {"images": images, "videos": videos}

    def _load_image(self, source: Any, budget: ItemBudget) -> Any:
        from qwen_vl_utils.vision_process import fetch_image

        from .constants import IMAGE_FACTOR, IMAGE_PATCH_SIZE, MAX_PIXELS, MIN_PIXELS
        from .media import load_image

        image = load_image(source, self.media_options)
        budget.add_pixels(image.width * image.height)
        element = {
            "type": "image",
            "image": image,
            "min_pixels": MIN_PIXELS,
            "max_pixels": MAX_PIXELS,
        }
        resized = fetch_image(element, image_patch_size=IMAGE_PATCH_SIZE)
        budget.add_tokens((resized.width // IMAGE_FACTOR) * (resized.height // IMAGE_FACTOR) + 2)
        return resized

    def _process(
        self, prompt: str, media: dict[str, list[Any]], truncation: bool, max_length: int | None
    ) -> Any:
        images, videos = media["images"], media["videos"]
        return self.processor(
            text=[prompt],
            images=images or None,
            videos=[video.frames for video in videos] or None,
            video_metadata=[video.metadata for video in videos] or None,
            truncation=truncation,
            max_length=max_length,
            do_resize=False,  # media were resized above, as qwen_vl_utils does
            do_sample_frames=False,  # frames were sampled above
            return_tensors="pt",
        )

    def _check_no_reserved_tokens(self, prompt: str, item: VLItem) -> None:
        """A literal <|image_pad|> or <|video_pad|> in a text or instruction would become a vision
        placeholder with no features behind it, and break every batch the item joins."""
        for token, media in (
            (self.processor.image_token, item.images),
            (self.processor.video_token, item.videos),
        ):
            if prompt.count(token) != len(media):
                raise InputError(
                    f"text and instruction must not contain the reserved token {token}"
                )

    def _check_media_survives(self, input_ids: list[int], max_length: int) -> None:
        """Truncation may drop text but never vision tokens (the official processor call would
        raise for the whole batch; here the one item is refused)."""
        keep = max_length - self.added_tokens
        media_positions = [
            position
            for position, token in enumerate(input_ids)
            if token in (self.image_token_id, self.video_token_id)
        ]
        if media_positions and media_positions[-1] >= keep:
            raise InputTooLongError(
                f"its media end at token {media_positions[-1] + 1 + self.added_tokens}, beyond "
                f"max_length={max_length}, and truncation may only drop text; use a smaller image, "
                "a shorter video or a larger max_length"
            )
