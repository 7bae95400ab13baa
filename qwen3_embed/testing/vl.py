"""Tiny random-weight Qwen3-VL-Embedding checkpoints: the real Qwen3-VL architecture (text tower,
vision tower with DeepStack mergers), saved as `Qwen3VLForConditionalGeneration` exactly like the
published ones, plus a Qwen3-VL-style processor (image + video processors, tokenizer with the
vision special tokens, chat template). Needs the `[vl]` extra (the video processor uses
torchvision)."""

from __future__ import annotations

from pathlib import Path

import torch

from .tokenizer import build_qwen_style_tokenizer, save_tokenizer

# Renders like Qwen3-VL's own template for the turns an embedder uses (system, user, generation
# prompt): `<|im_start|>system\n{instr}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n
# <|im_start|>assistant\n`, one `<|vision_start|><|image_pad|><|vision_end|>` per image and one
# `<|vision_start|><|video_pad|><|vision_end|>` per video, in content order.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- macro render_content(content) %}"
    "{%- if content is string %}{{- content }}"
    "{%- else %}{%- for item in content %}"
    "{%- if 'image' in item or 'image_url' in item or item.type == 'image' %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif 'video' in item or item.type == 'video' %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in item %}{{- item.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{%- endmacro %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + render_content(message.content) + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen3-VL's published pre-processing constants (preprocessor_config.json / video_preprocessor_config.json).
_PATCH_SIZE = 16
_MERGE_SIZE = 2
_TEMPORAL_PATCH_SIZE = 2
_MEAN_STD = [0.5, 0.5, 0.5]


def make_tiny_vl_model(
    directory: str | Path,
    text_hidden_size: int = 128,
    text_layers: int = 2,
    vision_hidden_size: int = 32,
    vision_depth: int = 2,
    seed: int = 0,
    task: str = "embed",
    tie_word_embeddings: bool = True,
) -> Path:
    """Write a random Qwen3-VL checkpoint + processor to `directory` and return it.

    The text hidden size (128) leaves room for Matryoshka dims between the family minimum (64)
    and the full size. `task="rerank"` gives the tokenizer `yes` and `no` tokens (a
    Qwen3-VL-Reranker reads its score from them); the architecture is the same."""
    from ..vl.extra import require_vl_extra

    require_vl_extra()  # the processor's image and video processors need torchvision
    if task not in ("embed", "rerank"):
        raise ValueError(f"unknown task {task!r}; valid values are: embed, rerank")
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Qwen3-VL's tokenizer appends no EOS: the pooled token is the "\n" after "assistant".
    tokenizer = build_qwen_style_tokenizer(append_eos=False, reranker=task == "rerank")
    save_tokenizer(tokenizer, directory, chat_template=QWEN3_VL_CHAT_TEMPLATE)
    token_id = tokenizer.token_to_id
    num_heads = 4
    head_dim = text_hidden_size // num_heads
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": tokenizer.get_vocab_size(),
            "hidden_size": text_hidden_size,
            "intermediate_size": 2 * text_hidden_size,
            "num_hidden_layers": text_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": 2,
            "head_dim": head_dim,
            "max_position_embeddings": 32768,
            # Interleaved M-RoPE like the real model; the sections split head_dim / 2 into T, H, W.
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_interleaved": True,
                "mrope_section": [
                    head_dim // 2 - 2 * (head_dim // 8),
                    head_dim // 8,
                    head_dim // 8,
                ],
            },
            "pad_token_id": token_id("<|endoftext|>"),
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": vision_hidden_size,
            "intermediate_size": 2 * vision_hidden_size,
            "num_heads": 2,
            "patch_size": _PATCH_SIZE,
            "spatial_merge_size": _MERGE_SIZE,
            "temporal_patch_size": _TEMPORAL_PATCH_SIZE,
            "out_hidden_size": text_hidden_size,
            "num_position_embeddings": 64,  # a square grid (8 x 8), resampled per image
            "deepstack_visual_indexes": list(range(min(vision_depth, text_layers))),
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.save_pretrained(directory)

    from transformers import AutoTokenizer

    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            patch_size=_PATCH_SIZE,
            merge_size=_MERGE_SIZE,
            temporal_patch_size=_TEMPORAL_PATCH_SIZE,
            image_mean=_MEAN_STD,
            image_std=_MEAN_STD,
            size={"shortest_edge": 65536, "longest_edge": 16777216},
        ),
        video_processor=Qwen3VLVideoProcessor(
            patch_size=_PATCH_SIZE,
            merge_size=_MERGE_SIZE,
            temporal_patch_size=_TEMPORAL_PATCH_SIZE,
            image_mean=_MEAN_STD,
            image_std=_MEAN_STD,
            size={"shortest_edge": 4096, "longest_edge": 25165824},
        ),
        tokenizer=AutoTokenizer.from_pretrained(directory),
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(directory)
    return directory
