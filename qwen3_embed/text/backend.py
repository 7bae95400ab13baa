"""The text family: Qwen3-Embedding (and sentence-transformers-format text models)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..contracts import Backend, InputPreparer, PreparedInput, PrepareResult
from ..errors import InputError, InputTooLongError
from ..model_info import ModelInfo
from ..pooling import pool
from ..prompts import check_instruction, check_text, format_text_query
from .packed_attention import (
    install_packed_attention,
    original_implementation,
    packed_attention_kernel,
)
from .packing import PackedBatch, PaddedBatch, pack_batch, pad_batch

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
        text = item.get("text")
        if isinstance(text, (list, tuple)):
            # The VL item form (several texts in one item, e.g. several text parts of one chat
            # message) has no meaning for a text model: say what is allowed.
            raise InputError(
                f"text is a list of {len(text)} texts; a text model embeds one text per item "
                "(one string, or one text part per message): join them into one string, send "
                "them as separate inputs for separate vectors, or use a VL model",
                field="text",
            )
        return check_text(text, field="text"), instruction
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
        self,
        items: Sequence[Any],
        instruction: str | None,
        truncate: bool,
        max_length: int,
        prompt: str | None = None,
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
            if item_instruction is None and prompt is not None:
                # sentence-transformers prepends the prompt to the text: Qwen3's "query" prompt
                # `Instruct: {task}\nQuery:` + text is exactly `format_text_query(text, task)`.
                prompts.append(prompt + text)
            else:
                prompts.append(format_text_query(text, item_instruction))
            positions.append(position)
        encoded = self._tokenize(prompts, truncate, max_length)
        cut = self._truncated(prompts, encoded, max_length) if truncate else set()
        for slot, (position, ids) in enumerate(zip(positions, encoded, strict=True)):
            if len(ids) > max_length:
                results[position] = InputTooLongError(
                    f"input has {len(ids)} tokens, more than max_length={max_length}; enable truncation or shorten it"
                )
            else:
                results[position] = PreparedInput(input_ids=ids, truncated=slot in cut)
        return results

    def _truncated(self, prompts: list[str], encoded: list[list[int]], max_length: int) -> set[int]:
        """Which prompts truncation cut. A cut sequence is exactly `max_length` long, so only
        those are tokenised again, whole, to tell a cut one from one that just fits."""
        full = [slot for slot, ids in enumerate(encoded) if len(ids) == max_length]
        if not full:
            return set()
        whole = self._tokenize([prompts[slot] for slot in full], False, max_length)
        return {slot for slot, ids in zip(full, whole, strict=True) if len(ids) > max_length}

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


def load_backbone(
    model_dir: Path, device: torch.device, dtype: torch.dtype, attn: str
) -> torch.nn.Module:
    """The backbone, its weights read straight onto `device` in `dtype` (`device_map`): no
    full host copy first (16 GB for the 8B in bf16, per replica; host RAM is what runs out first
    on a GPU node) and no fp32 materialisation of bf16 weights."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(
        model_dir, dtype=dtype, device_map=device, attn_implementation=attn
    )


FORWARD_MODES = ("padded", "packed")
# Which `torch.compile` backend `compile()` uses; tests swap in "eager" (graph capture without
# code generation) to prove the compiled path's wiring in seconds.
COMPILE_BACKEND = "inductor"


class TextBackend(Backend):
    def __init__(
        self,
        model_dir: Path,
        preparer: TextPreparer,
        device: torch.device,
        dtype: torch.dtype,
        attn: str,
        forward_mode: str = "padded",
    ):
        model = load_backbone(model_dir, device, dtype, attn)
        self._attach(model, preparer.info, preparer.pad_id, device, dtype, forward_mode)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        info: ModelInfo,
        pad_id: int,
        device: torch.device,
        dtype: torch.dtype,
        forward_mode: str = "padded",
    ) -> TextBackend:
        """A backend around an already built backbone (benchmarks build random weights directly
        on the device, with no checkpoint on disk)."""
        backend = cls.__new__(cls)
        backend._attach(model, info, pad_id, device, dtype, forward_mode)
        return backend

    def _attach(
        self,
        model: torch.nn.Module,
        info: ModelInfo,
        pad_id: int,
        device: torch.device,
        dtype: torch.dtype,
        forward_mode: str,
    ) -> None:
        if forward_mode not in FORWARD_MODES:
            raise ValueError(
                f"unknown forward_mode {forward_mode!r}; valid values are: {', '.join(FORWARD_MODES)}"
            )
        if forward_mode == "packed" and not info.is_qwen:
            raise ValueError(
                "forward_mode='packed' needs a Qwen3 (causal, last-token) model; "
                f"{info.model_type!r} models run padded"
            )
        self.info, self.device, self.dtype = info, device, dtype
        self.pad_id = pad_id
        self.forward_mode = forward_mode
        # Right padding by default. For Qwen (causal) this is exact without any attention mask:
        # a real token only attends to earlier positions, which are all real, so the pads after it
        # are never seen. Skipping the mask lets SDPA use its fused causal kernel instead of
        # materialising a (B, heads, T, T) mask. Left padding (the official layout) stays
        # available and gives the same vectors; tests compare the two.
        self.left_padding = False
        self.model = model
        self.model.to(device).eval()  # a no-op when loaded there (`load_backbone`)
        self.attn_implementation = original_implementation(model)
        if forward_mode == "packed":
            # Padded forwards (`forward`) keep the original attention through the hook; a padded
            # backend never renames the model's implementation (flash-attention looks it up).
            install_packed_attention(self.model)
        self._run: Any = self.model  # the callable forward: the model, or its compiled wrapper
        self.compiled = False
        # Host tensors are pinned only for a GPU: pinning is a page-locking syscall, useless on CPU.
        self._pin = device.type == "cuda"

    @property
    def packed_kernel(self) -> str | None:
        """The attention kernel of the packed path (None when this backend runs padded)."""
        if self.forward_mode != "packed":
            return None
        return packed_attention_kernel(self.attn_implementation, self.device, self.dtype)

    @property
    def attention_kernel(self) -> str:
        """What the forwards' attention runs: the packed kernel, or the model's implementation."""
        return self.packed_kernel or self.attn_implementation

    def compile(self, backend: str | None = None) -> None:
        """`torch.compile` with dynamic shapes: token counts vary every batch, so one graph must
        serve them all instead of one recompilation per shape."""
        self._run = torch.compile(self.model, dynamic=True, backend=backend or COMPILE_BACKEND)
        self.compiled = True

    def _pad(self, batch: Sequence[PreparedInput]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) input ids and attention mask on the device, padded on the configured side."""
        padded = pad_batch(batch, self.pad_id, self.left_padding).to(self.device)
        return padded.input_ids, padded.attention_mask

    def stage(self, batch: Sequence[PreparedInput]) -> PaddedBatch | PackedBatch:
        if self.forward_mode == "packed":
            return pack_batch(batch, pin=self._pin)
        return pad_batch(batch, self.pad_id, self.left_padding, pin=self._pin)

    @torch.inference_mode()
    def forward(self, batch: Sequence[PreparedInput]) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded forward: (hidden (B, T, H), attention_mask (B, T))."""
        padded = pad_batch(batch, self.pad_id, self.left_padding).to(self.device)
        return self._forward_padded(padded), padded.attention_mask

    @torch.inference_mode()
    def forward_staged(self, staged: PaddedBatch | PackedBatch, pooling_mode: str) -> torch.Tensor:
        if isinstance(staged, PackedBatch):
            packed = staged.to(self.device)
            hidden = self._forward_packed(packed)  # (1, ΣT, H)
            return hidden[0, packed.last_token_index()]  # (N, H): each sequence's last token
        padded = staged.to(self.device)
        return pool(self._forward_padded(padded), padded.attention_mask, pooling_mode)

    def _forward_padded(self, padded: PaddedBatch) -> torch.Tensor:
        input_ids, attention_mask = padded.input_ids, padded.attention_mask
        # An embedder never decodes: no KV cache (Qwen3 would otherwise copy K and V of every
        # layer into a DynamicCache on each pass).
        if not self.info.is_qwen:
            output = self._run(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        elif self.left_padding:
            # Positions count real tokens only, so a vector does not depend on its batch's padding.
            position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
            output = self._run(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            )
        else:  # right padding + causal attention: no mask needed
            output = self._run(input_ids=input_ids, use_cache=False)
        return output.last_hidden_state

    def _forward_packed(self, packed: PackedBatch) -> torch.Tensor:
        """(1, ΣT, H). The mask mapping is given explicitly as "none": attention is bounded by
        `cu_seq_lens` inside `packed_attention_forward`, and transformers must not build its dense
        (ΣT, ΣT) packed mask. The kwargs use transformers' own flash-attention names."""
        output = self._run(
            input_ids=packed.input_ids,
            position_ids=packed.position_ids,
            attention_mask={"full_attention": None},
            use_cache=False,
            cu_seq_lens_q=packed.cu_seq_lens,
            cu_seq_lens_k=packed.cu_seq_lens,
            max_length_q=packed.max_length,
            max_length_k=packed.max_length,
        )
        return output.last_hidden_state
