"""A CPU stand-in for torch's CUDA-only `varlen_attn`: a custom op with the kernel's contract
(packed (T, H, D) rows, `cu_seq` boundaries, K/V heads dividing the query heads, as
FlashAttention-2's `mha_varlen_fwd` takes them) and the Python signatures of each torch release
(read in torch's `torch/nn/attention/varlen.py`), so the real call path runs on CPU.

The attention itself is written out here (scores, causal mask, softmax), independently of the
code under test."""

from __future__ import annotations

import torch

CALLS: list[dict] = []  # per call: query heads, key heads, options the wrapper received


@torch.library.custom_op("qwen3_embed_test::varlen_attn", mutates_args=())
def varlen_op(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_q: torch.Tensor,
    cu_seq_k: torch.Tensor,
    max_q: int,
    max_k: int,
    is_causal: bool,
    scale: float | None,
) -> torch.Tensor:
    heads, kv_heads = query.shape[1], key.shape[1]
    if heads % kv_heads:
        raise RuntimeError("Number of heads in key/value must divide number of heads in query")
    groups = heads // kv_heads
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    output = torch.empty_like(query)
    bounds = cu_seq_q.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        q = query[start:end].float()  # (L, Hq, D)
        # query head h reads key/value head h // groups (grouped-query attention)
        k = key[start:end].float()[:, torch.arange(heads) // groups]
        v = value[start:end].float()[:, torch.arange(heads) // groups]
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        if is_causal:
            length = end - start
            future = torch.ones(length, length, dtype=torch.bool).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        output[start:end] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).to(query.dtype)
    return output


@varlen_op.register_fake
def _(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal, scale):
    return torch.empty_like(query)


def _record(query, key, **options) -> None:
    CALLS.append({"heads": query.shape[1], "kv_heads": key.shape[1], **options})


def varlen_2_10(
    query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None
):
    _record(query, key, is_causal=is_causal)
    return varlen_op(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal, None)


def varlen_2_11(
    query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
    window_size=(-1, -1),
):  # fmt: skip
    _record(query, key, scale=scale, window_size=window_size)
    causal = tuple(window_size) == (-1, 0)
    return varlen_op(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal, scale)


def varlen_2_12(
    query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
    window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None,
):  # fmt: skip
    _record(query, key, scale=scale, window_size=window_size, enable_gqa=enable_gqa)
    if not enable_gqa and query.shape[1] != key.shape[1]:  # as torch 2.12-2.14's wrapper
        raise ValueError("Expect query and key/value to have the same number of heads")
    causal = tuple(window_size) == (-1, 0)
    return varlen_op(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal, scale)


RELEASES = {"2.10": varlen_2_10, "2.11": varlen_2_11, "2.12+": varlen_2_12}


def install(monkeypatch, release: str) -> None:
    """Make packed attention run the stand-in of `release` on CPU in fp32 (the real kernel is
    CUDA and fp16/bf16 only)."""
    from qwen3_embed.text import packed_attention

    stand_in = packed_attention.describe_varlen(RELEASES[release])
    monkeypatch.setattr(packed_attention, "_varlen", lambda: stand_in)
    monkeypatch.setattr(packed_attention, "VARLEN_DEVICE_TYPES", ("cpu", "meta"))
    monkeypatch.setattr(packed_attention, "VARLEN_DTYPES", (torch.float32,))
    CALLS.clear()
