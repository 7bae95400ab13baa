"""Offline test fixtures users can run too: tiny random-weight checkpoints of the real
architectures (`qwen3-embed make-tiny-model DIR`). Their vectors mean nothing."""

from .text import make_tiny_text_model

__all__ = ["make_tiny_text_model", "make_tiny_model"]


def make_tiny_model(directory, family: str = "text", **kwargs):
    """Build a tiny checkpoint of `family` ("text" or "vl") in `directory`; `task="rerank"`
    builds a reranker of that family (tokenizer with `yes` / `no`; `Reranker` loads it)."""
    if family == "text":
        return make_tiny_text_model(directory, **kwargs)
    if family == "vl":
        from .vl import make_tiny_vl_model

        return make_tiny_vl_model(directory, **kwargs)
    raise ValueError(f"unknown family {family!r}; valid values are: text, vl")
