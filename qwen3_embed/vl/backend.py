"""`VLBackend`: the device stage of Qwen3-VL-Embedding.

The backbone is transformers' `Qwen3VLModel` (text + vision towers, no LM head) loaded straight
from the published `Qwen3VLForConditionalGeneration` checkpoint; its `last_hidden_state` is taken
after the final norm, as the official embedder does. A batch is collated like the processor's own
right-padded batch: ids padded right, media in item order (the model scatters image and video
features into the pad tokens row by row, in that order). Media arrive as resized uint8 pixels and
are normalised into patches here, on the device (`pixels.media_tensors`).

Like the text path, the host work of a batch (`stage`: ids, mask, token types, each medium's
pixels split out, all pinned on a GPU) runs while the previous batch is on the device, and
`forward_staged` copies it with `non_blocking=True`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..contracts import Backend, PreparedInput
from ..pooling import pool
from .pixels import IMAGE_KEYS, VIDEO_KEYS, StagedMedia, media_tensors, stage_media
from .preparer import VLPreparer


@dataclass(frozen=True)
class StagedVLBatch:
    """A batch's host tensors: (B, T) ids, mask and token types, and its media."""

    inputs: dict[str, torch.Tensor]
    media: StagedMedia


# Processor convention for `mm_token_type_ids`, which drives the 3-D (M-RoPE) positions.
TEXT_TYPE, IMAGE_TYPE, VIDEO_TYPE = 0, 1, 2


class VLBackend(Backend):
    def __init__(
        self,
        model_dir: Path,
        preparer: VLPreparer,
        device: torch.device,
        dtype: torch.dtype,
        attn: str,
    ):
        from transformers import Qwen3VLModel

        self.info, self.device, self.dtype = preparer.info, device, dtype
        self.pad_id = preparer.pad_id
        self.image_token_id = preparer.image_token_id
        self.video_token_id = preparer.video_token_id
        self.processor = preparer.processor  # its image / video processors normalise the pixels
        # Straight onto the device in the target dtype (see `text.backend.load_backbone`).
        self.model = Qwen3VLModel.from_pretrained(
            model_dir, dtype=dtype, device_map=device, attn_implementation=attn
        )
        self.attn_implementation = attn
        # An embedder never decodes: no KV cache to allocate for every batch.
        self.model.language_model.config.use_cache = False
        self.model.to(device).eval()  # a no-op when loaded there
        self._pin = device.type == "cuda"  # page-locked host memory only pays for a GPU copy

    @property
    def attention_kernel(self) -> str:
        return self.attn_implementation

    def stage(self, batch: Sequence[PreparedInput]) -> StagedVLBatch:
        """Host work of a batch (see the module doc): right-padded ids + mask + token types and
        each medium's pixels, pinned on a GPU."""
        inputs = self._collate_text(batch)
        if self._pin:
            inputs = {key: value.pin_memory() for key, value in inputs.items()}
        return StagedVLBatch(inputs, stage_media([item.media for item in batch], self._pin))

    def _to_device(self, staged: StagedVLBatch) -> dict[str, torch.Tensor]:
        inputs = {
            key: value.to(self.device, non_blocking=True) for key, value in staged.inputs.items()
        }
        inputs.update(media_tensors(staged.media, self.processor, self.device))
        return inputs

    def collate(self, batch: Sequence[PreparedInput]) -> dict[str, torch.Tensor]:
        """Right-padded ids + mask + token types, and each media array concatenated in item
        order (media on the device)."""
        inputs = self._collate_text(batch)
        inputs.update(media_tensors([item.media for item in batch], self.processor, self.device))
        return inputs

    def _collate_text(self, batch: Sequence[PreparedInput]) -> dict[str, torch.Tensor]:
        for item in batch:
            _check_media_matches_tokens(item, self.image_token_id, self.video_token_id)
        longest = max(item.num_tokens for item in batch)
        input_ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, item in enumerate(batch):
            input_ids[row, : item.num_tokens] = torch.as_tensor(item.input_ids, dtype=torch.long)
            attention_mask[row, : item.num_tokens] = 1
        token_types = torch.full_like(input_ids, TEXT_TYPE)
        token_types[input_ids == self.image_token_id] = IMAGE_TYPE
        token_types[input_ids == self.video_token_id] = VIDEO_TYPE
        token_types[attention_mask == 0] = TEXT_TYPE
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": token_types,
        }

    @torch.inference_mode()
    def forward(self, batch: Sequence[PreparedInput]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward(self._to_device(self.stage(batch)))

    @torch.inference_mode()
    def forward_staged(self, staged: StagedVLBatch, pooling_mode: str) -> torch.Tensor:
        hidden, attention_mask = self._forward(self._to_device(staged))
        return pool(hidden, attention_mask, pooling_mode)

    def _forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # use_cache=False on every call too (not only in the config): no KV cache is ever built.
        output = self.model(**inputs, use_cache=False)
        return output.last_hidden_state, inputs["attention_mask"]  # (B, T, H), (B, T)


def _check_media_matches_tokens(
    item: PreparedInput, image_token_id: int, video_token_id: int
) -> None:
    """Vision pad tokens without their pixels (or pixels without tokens) would silently embed the
    wrong thing, or shift another item's media into this one: refuse such an item loudly."""
    for token_id, keys in ((image_token_id, IMAGE_KEYS), (video_token_id, VIDEO_KEYS)):
        has_tokens = token_id in item.input_ids
        present = [key in item.media for key in keys]
        if any(present) != all(present) or has_tokens != all(present):
            raise ValueError(
                f"prepared input is inconsistent: vision tokens {'present' if has_tokens else 'absent'} "
                f"but media keys {sorted(item.media)}; expected {', '.join(keys)} together with the tokens"
            )
