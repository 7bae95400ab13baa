"""The text family: Qwen3-Embedding (and sentence-transformers-format text models)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .backend import Backend, InputPreparer, PreparedInput, PrepareResult
from .errors import InputError, InputTooLongError
from .model_info import ModelInfo
from .prompts import check_instruction, check_text, format_text_query

QWEN_EOS_TOKEN = "<|endoftext|>"


def split_text_item(item: Any, instruction: str | None) -> tuple[str, str | None]:
    """A text item is a string, or a dict {"text", "instruction"?} with a per-item instruction."""
    if isinstance(item, dict):
        unknown = set(item) - {"text", "instruction"}
        if unknown:
            raise InputError(
                f"unknown key(s) {sorted(unknown)} for a text model; valid keys are: text, instruction"
            )
        if item.get("instruction") is not None:
            instruction = check_instruction(item["instruction"])
        return check_text(item.get("text")), instruction
    return check_text(item), instruction


class TextPreparer(InputPreparer):
    """Formats prompts and tokenises; Qwen sequences always end in exactly one <|endoftext|>."""

    def __init__(self, model_dir: Path, info: ModelInfo):
        from transformers import AutoTokenizer

        self.info = info
        # Qwen3-Embedding is left-padded in the official code; pooling works for either side.
        self.padding_side = "left" if info.is_qwen else "right"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side=self.padding_side)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.eos_id: int | None = None
        self.tokenizer_appends_eos = True
        if info.is_qwen:
            self.eos_id = self.tokenizer.convert_tokens_to_ids(QWEN_EOS_TOKEN)
            if self.eos_id is None or self.eos_id == self.tokenizer.unk_token_id:
                raise ValueError(f"{model_dir}: tokenizer has no {QWEN_EOS_TOKEN} token")
            probe = self.tokenizer("a", add_special_tokens=True)["input_ids"]
            self.tokenizer_appends_eos = bool(probe) and probe[-1] == self.eos_id

    def prepare_items(
        self, items: Sequence[Any], instruction: str | None, truncate: bool, max_length: int
    ) -> list[PrepareResult]:
        results: list[PrepareResult] = [InputError("not prepared")] * len(items)
        prompts: list[str] = []
        positions: list[int] = []
        for position, item in enumerate(items):
            try:
                text, item_instruction = split_text_item(item, instruction)
            except InputError as error:
                results[position] = error
                continue
            prompts.append(format_text_query(text, item_instruction))
            positions.append(position)
        for position, ids in zip(
            positions, self._tokenize(prompts, truncate, max_length), strict=True
        ):
            if len(ids) > max_length:
                results[position] = InputTooLongError(
                    f"input has {len(ids)} tokens, more than max_length={max_length}; enable truncation or shorten it"
                )
            else:
                results[position] = PreparedInput(input_ids=ids)
        return results

    def _tokenize(self, prompts: list[str], truncate: bool, max_length: int) -> list[list[int]]:
        if not prompts:
            return []
        append_eos = self.info.is_qwen and not self.tokenizer_appends_eos
        # Leave room for the EOS we append ourselves; a post-processor's EOS is kept by truncation.
        budget = max_length - 1 if append_eos else max_length
        encoded = self.tokenizer(
            prompts,
            add_special_tokens=True,
            truncation=truncate,
            max_length=budget if truncate else None,
        )["input_ids"]
        if append_eos:
            encoded = [ids + [self.eos_id] for ids in encoded]
        return encoded


class TextBackend(Backend):
    def __init__(
        self,
        model_dir: Path,
        preparer: TextPreparer,
        device: torch.device,
        dtype: torch.dtype,
        attn: str,
    ):
        from transformers import AutoModel

        self.info, self.device, self.dtype = preparer.info, device, dtype
        self.pad_id = preparer.pad_id
        # Right padding by default. For Qwen (causal) this is exact without any attention mask:
        # a real token only attends to earlier positions, which are all real, so the pads after it
        # are never seen. Skipping the mask lets SDPA use its fused causal kernel instead of
        # materialising a (B, heads, T, T) mask. Left padding (the official layout) stays
        # available and gives the same vectors; tests compare the two.
        self.left_padding = False
        self.model = AutoModel.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn)
        self.model.to(device).eval()

    def _pad(self, batch: Sequence[PreparedInput]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) input ids and attention mask, padded on the configured side."""
        longest = max(item.num_tokens for item in batch)
        input_ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, item in enumerate(batch):
            span = (
                slice(longest - item.num_tokens, longest)
                if self.left_padding
                else slice(0, item.num_tokens)
            )
            input_ids[row, span] = torch.as_tensor(item.input_ids, dtype=torch.long)
            attention_mask[row, span] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    @torch.inference_mode()
    def forward(self, batch: Sequence[PreparedInput]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, attention_mask = self._pad(batch)
        if not self.info.is_qwen:
            output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        elif self.left_padding:
            # Positions count real tokens only, so a vector does not depend on its batch's padding.
            position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
            output = self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
            )
        else:
            output = self.model(
                input_ids=input_ids
            )  # right padding + causal attention: no mask needed
        return output.last_hidden_state, attention_mask
