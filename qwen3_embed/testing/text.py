"""Tiny random-weight Qwen3-Embedding checkpoints (the real Qwen3 architecture, saved as
Qwen3ForCausalLM exactly like the published ones) for offline tests and smoke runs."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .tokenizer import build_qwen_style_tokenizer, save_tokenizer

# The Qwen3-Embedding releases' config_sentence_transformers.json prompts, written out literally
# (not rebuilt from our own template) so a test comparing them with `instruction=` means something.
QWEN3_ST_PROMPTS = {
    "query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    "document": "",
}


def make_tiny_text_model(
    directory: str | Path,
    append_eos: bool = True,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
    task: str = "embed",
    tie_word_embeddings: bool = True,
    head_dim: int | None = None,
) -> Path:
    """Write a random Qwen3 checkpoint + Qwen-style tokenizer to `directory` and return it.

    `task="rerank"` makes a Qwen3-Reranker-like checkpoint instead: a tokenizer holding `yes`
    and `no` and no EOS post-processor (the base Qwen3 tokenizer's), no sentence-transformers
    files; `tie_word_embeddings=False` saves an LM head of its own (as the 4B / 8B do), True
    ties it to the input embeddings (as the 0.6B does). `head_dim` defaults to hidden / heads;
    the released models all have 128."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if task not in ("embed", "rerank"):
        raise ValueError(f"unknown task {task!r}; valid values are: embed, rerank")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    reranker = task == "rerank"
    tokenizer = build_qwen_style_tokenizer(
        append_eos=append_eos and not reranker, reranker=reranker
    )
    save_tokenizer(tokenizer, directory)
    config = Qwen3Config(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim or hidden_size // num_heads,
        max_position_embeddings=32768,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.token_to_id("<|endoftext|>"),
        eos_token_id=tokenizer.token_to_id("<|im_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).eval()
    model.save_pretrained(directory)
    if not reranker:
        write_sentence_transformers_config(directory)
    return directory


def write_sentence_transformers_config(directory: Path) -> None:
    """The named prompts the Qwen3-Embedding releases ship in config_sentence_transformers.json
    (same keys and values), so `prompt_name="query"` is tested through `from_pretrained`."""
    config = {
        "prompts": dict(QWEN3_ST_PROMPTS),
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    (directory / "config_sentence_transformers.json").write_text(
        json.dumps(config, indent=2) + "\n", encoding="utf-8"
    )
