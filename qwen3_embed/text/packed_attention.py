"""Attention for packed (padding-free) batches: one row of ΣT tokens holding N sequences, each
attending causally to itself only.

Registered with transformers' `AttentionInterface` as `qwen3_embed_packed_<original>` and
installed on a Qwen3 model in place of its attention function. A forward that carries `cu_seq_lens_q` (the
cumulative sequence boundaries, flash-attention's convention and transformers' own kwarg name)
runs packed; any other forward is handed to the model's original implementation (sdpa, eager,
flash_attention_2) unchanged, so one loaded model serves the padded and the packed path.

Kernels, picked once per process (`packed_kernel()`):
- `varlen_attn`: torch's `torch.nn.attention.varlen.varlen_attn` (flash / cuDNN varlen), CUDA
  and fp16/bf16 only. Its signature changed between torch releases (2.11 has `is_causal`, later
  ones `window_size`), so the call adapts to what is installed.
- `per_sequence_sdpa`: one `scaled_dot_product_attention(is_causal=True)` per sequence. Exact
  and device-agnostic; it is what runs on CPU (and in fp32 anywhere), so CI proves the packed
  path equal to the padded one. Slower per token on a GPU than varlen, never wrong.

transformers' own packed detection (`position_ids` resets with no attention mask) would build a
dense (ΣT, ΣT) block-diagonal mask for sdpa: 4 GiB of booleans at 64k tokens. Passing the mask
mapping explicitly as `{"full_attention": None}` skips that; this function needs no mask.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

import torch
import torch.nn.functional as F

PACKED_ATTENTION_PREFIX = "qwen3_embed_packed_"
KERNEL_VARLEN = "varlen_attn"
KERNEL_PER_SEQUENCE = "per_sequence_sdpa"


@lru_cache(maxsize=1)
def _varlen() -> tuple[Callable[..., torch.Tensor], bool, bool] | None:
    """(varlen_attn, takes window_size, takes scale) when torch has it, else None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters
    return varlen_attn, "window_size" in parameters, "scale" in parameters


def packed_kernel(device: torch.device, dtype: torch.dtype) -> str:
    """Which kernel packed attention uses for this device and dtype."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and _varlen():
        return KERNEL_VARLEN
    return KERNEL_PER_SEQUENCE


def _repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """(T, H_kv, D) -> (T, H_kv * groups, D): grouped-query heads expanded to match the queries."""
    return states if groups == 1 else states.repeat_interleave(groups, dim=1)


def _varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_lens: torch.Tensor,
    max_length: int,
    scaling: float,
) -> torch.Tensor:
    """(T, Hq, D), (T, Hkv, D) x2 -> (T, Hq, D) through torch's flash varlen kernel."""
    varlen_attn, has_window, has_scale = _varlen()  # type: ignore[misc]
    groups = query.shape[1] // key.shape[1]
    # K/V expanded explicitly: older releases have no `enable_gqa`; the copy is small next to Q.
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    options: dict[str, Any] = {"window_size": (-1, 0)} if has_window else {"is_causal": True}
    if has_scale:
        options["scale"] = scaling
    return varlen_attn(
        query, key, value, cu_seq_lens, cu_seq_lens, max_length, max_length, **options
    )


# Kept out of `torch.compile` graphs: the loop's trip count and slice bounds are data (the batch's
# lengths), so tracing it would recompile for every batch; the layers around it still compile.
@torch.compiler.disable
def _per_sequence_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_lens: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """(T, Hq, D), (T, Hkv, D) x2 -> (T, Hq, D): causal SDPA per sequence, exactly as padded."""
    groups = query.shape[1] // key.shape[1]
    output = torch.empty_like(query)
    bounds = cu_seq_lens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        # (L, H, D) -> (1, H, L, D), the layout SDPA wants
        q = query[start:end].transpose(0, 1).unsqueeze(0)
        k = _repeat_kv(key[start:end], groups).transpose(0, 1).unsqueeze(0)
        v = _repeat_kv(value[start:end], groups).transpose(0, 1).unsqueeze(0)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)
        output[start:end] = attended[0].transpose(0, 1)
    return output


def packed_attention_forward(
    delegate: str,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: (1, Hq, ΣT, D) queries, (1, Hkv, ΣT, D) keys
    and values -> ((1, ΣT, Hq, D), None). Without `cu_seq_lens_q`, `delegate` does the work."""
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        if delegate == "eager":  # not in the registry: it is each model's own fallback
            from transformers.models.qwen3.modeling_qwen3 import eager_attention_forward

            original: Callable[..., Any] = eager_attention_forward
        else:
            original = ALL_ATTENTION_FUNCTIONS[delegate]
        return original(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if query.shape[0] != 1:
        raise ValueError(f"a packed batch is one row, got a batch of {query.shape[0]} rows")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    # (1, H, T, D) -> (T, H, D)
    q, k, v = (states[0].transpose(0, 1) for states in (query, key, value))
    # A release without `scale` applies the default 1/sqrt(D); any other scale runs per sequence.
    varlen_usable = _varlen() is not None and (_varlen()[2] or scale == q.shape[-1] ** -0.5)
    if packed_kernel(q.device, q.dtype) == KERNEL_VARLEN and varlen_usable:
        max_length = int(kwargs["max_length_q"])
        out = _varlen_attention(q, k, v, cu_seq_lens, max_length, scale)
    else:
        out = _per_sequence_attention(q, k, v, cu_seq_lens, scale)
    return out.unsqueeze(0), None  # (1, ΣT, Hq, D)


def install_packed_attention(model: torch.nn.Module) -> None:
    """Route `model`'s attention through `packed_attention_forward` (padded forwards unchanged)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    config = model.config
    current = config._attn_implementation
    if current.startswith(PACKED_ATTENTION_PREFIX):
        return
    name = PACKED_ATTENTION_PREFIX + current
    AttentionInterface.register(name, partial(packed_attention_forward, current))
    # Padded forwards still build their mask the way the original implementation does.
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    config._attn_implementation = name
