"""Attention for packed (padding-free) batches: one row of ΣT tokens holding N sequences, each
attending causally to itself only.

Registered with transformers' `AttentionInterface` as `qwen3_embed_packed_<original>` and
installed on a Qwen3 model in place of its attention function, for packed backends whose
implementation is `sdpa` or `eager` (`needs_packed_hook`). A forward that carries `cu_seq_lens_q`
(the cumulative sequence boundaries, flash-attention's convention and transformers' own kwarg
name) runs packed; any other forward is handed to the original implementation unchanged, so one
loaded model serves the padded and the packed path. Flash-attention implementations
(`flash_attention_2`, ...) are never renamed: transformers' own `flash_attention_forward` looks
its kernels up by the config's implementation name (a renamed one raises "Could not find the
currently requested flash attention implementation"), and it already runs a forward carrying
`cu_seq_lens_q` through the package's own varlen kernel.

Kernels, picked once per process (`packed_kernel()`):
- `varlen_attn`: torch's `torch.nn.attention.varlen.varlen_attn`, CUDA and fp16/bf16 only. It
  runs FlashAttention-2's varlen forward (`aten._flash_attention_forward`) for every call made
  here: 2.10 and 2.11 never choose cuDNN (`_should_use_cudnn` returns False), and 2.14's cuDNN
  path needs full attention (`window_size=(-1, -1)`) and as many K/V heads as query heads, while
  these calls are causal with grouped-query heads. Its signature, read in torch's
  `torch/nn/attention/varlen.py` of each release:
  - 2.10: `varlen_attn(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False,
    return_aux=None)` (no `scale`: the default 1/sqrt(D) only);
  - 2.11: `..., *, return_aux=None, scale=None, window_size=(-1, -1)` (causal is
    `window_size=(-1, 0)`);
  - 2.12 to 2.14 (2.14.1 installed here): `..., window_size=(-1, -1), enable_gqa=False,
    seqused_k=None, block_table=None, num_splits=None`, and the wrapper refuses K/V with fewer
    heads than Q unless `enable_gqa=True`.
  Grouped-query heads are never repeated: 2.12+ gets `enable_gqa=True`; on 2.10/2.11 the wrapper
  does not check head counts and the flash kernel takes K/V with H_kv dividing H_q natively
  (`mha_varlen_fwd`: "Number of heads in key/value must divide number of heads in query").
- `per_sequence_sdpa`: one `scaled_dot_product_attention(is_causal=True)` per sequence. Exact
  and device-agnostic; it is what runs on CPU (and in fp32 anywhere), so CI proves the packed
  path equal to the padded one. On a GPU it costs one launch per sequence per layer and a
  `.tolist()` host sync per layer, which is why `forward_mode="auto"` picks packed only when a
  varlen kernel runs (`varlen_kernel()`).

transformers' own packed detection (`position_ids` resets with no attention mask) would build a
dense (ΣT, ΣT) block-diagonal mask for sdpa: 4 GiB of booleans at 64k tokens. Passing the mask
mapping explicitly as `{"full_attention": None}` skips that; this function needs no mask.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import torch
import torch.nn.functional as F

PACKED_ATTENTION_PREFIX = "qwen3_embed_packed_"
KERNEL_VARLEN = "varlen_attn"
KERNEL_PER_SEQUENCE = "per_sequence_sdpa"
KERNEL_FLASH_ATTN = "flash_attn_varlen"  # the flash-attn package's own, through transformers
# Implementations that run packed forwards themselves (transformers' flash-attention path).
FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
# Where torch's varlen kernel exists (CUDA) and the dtypes it takes; tests widen these to run a
# CPU stand-in of the kernel through the real call path.
VARLEN_DEVICE_TYPES: tuple[str, ...] = ("cuda",)
VARLEN_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Varlen:
    """torch's `varlen_attn` and which keywords the installed release takes."""

    function: Callable[..., torch.Tensor]
    window_size: bool  # 2.11+: causal is window_size=(-1, 0); 2.10: is_causal=True
    scale: bool  # 2.11+
    enable_gqa: bool  # 2.12+


@lru_cache(maxsize=1)
def _varlen() -> Varlen | None:
    """The installed torch's varlen kernel, or None (torch < 2.10)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return describe_varlen(varlen_attn)


def describe_varlen(function: Callable[..., torch.Tensor]) -> Varlen:
    parameters = inspect.signature(function).parameters
    return Varlen(
        function, "window_size" in parameters, "scale" in parameters, "enable_gqa" in parameters
    )


def packed_kernel(device: torch.device, dtype: torch.dtype) -> str:
    """Which kernel packed attention uses for this device and dtype (sdpa / eager models)."""
    if device.type in VARLEN_DEVICE_TYPES and dtype in VARLEN_DTYPES and _varlen() is not None:
        return KERNEL_VARLEN
    return KERNEL_PER_SEQUENCE


def needs_packed_hook(attn_implementation: str) -> bool:
    """Flash-attention implementations run packed forwards themselves (see the module doc)."""
    return attn_implementation not in FLASH_IMPLEMENTATIONS


def packed_attention_kernel(
    attn_implementation: str, device: torch.device, dtype: torch.dtype
) -> str:
    """The kernel a packed forward of a model with `attn_implementation` runs."""
    if not needs_packed_hook(attn_implementation):
        return KERNEL_FLASH_ATTN
    return packed_kernel(device, dtype)


def varlen_kernel(attn_implementation: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether packed attention runs a varlen kernel (one launch per layer, no host sync)."""
    return packed_attention_kernel(attn_implementation, device, dtype) in (
        KERNEL_VARLEN,
        KERNEL_FLASH_ATTN,
    )


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
    """(T, Hq, D), (T, Hkv, D) x2 -> (T, Hq, D) through torch's varlen kernel, K/V unrepeated."""
    varlen = _varlen()
    assert varlen is not None
    options: dict[str, Any] = (
        {"window_size": (-1, 0)} if varlen.window_size else {"is_causal": True}
    )
    if varlen.scale:
        options["scale"] = scaling
    if varlen.enable_gqa and key.shape[1] != query.shape[1]:
        options["enable_gqa"] = True
    return varlen.function(
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
    varlen = _varlen()
    # 2.10 has no `scale` and applies the default 1/sqrt(D); any other scale runs per sequence.
    varlen_usable = varlen is not None and (varlen.scale or scale == q.shape[-1] ** -0.5)
    if packed_kernel(q.device, q.dtype) == KERNEL_VARLEN and varlen_usable:
        max_length = int(kwargs["max_length_q"])
        out = _varlen_attention(q, k, v, cu_seq_lens, max_length, scale)
    else:
        out = _per_sequence_attention(q, k, v, cu_seq_lens, scale)
    return out.unsqueeze(0), None  # (1, ΣT, Hq, D)


def install_packed_attention(model: torch.nn.Module) -> None:
    """Route `model`'s attention through `packed_attention_forward` (padded forwards unchanged).
    Flash-attention implementations are left as they are (they pack natively)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    config = model.config
    current = config._attn_implementation
    if current.startswith(PACKED_ATTENTION_PREFIX) or not needs_packed_hook(current):
        return
    name = PACKED_ATTENTION_PREFIX + current
    AttentionInterface.register(name, partial(packed_attention_forward, current))
    # Padded forwards still build their mask the way the original implementation does.
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    config._attn_implementation = name


def original_implementation(model: torch.nn.Module) -> str:
    """The attention implementation the model was loaded with (before any packed hook)."""
    return model.config._attn_implementation.removeprefix(PACKED_ATTENTION_PREFIX)
