"""Pick the device and compute dtype the way users expect: GPU bf16 when present, else CPU fp32."""

from __future__ import annotations

import torch

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            # bf16 keeps fp32's range; GPUs without it (pre-Ampere) get fp16.
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # bf16 matmuls are far slower than fp32 on CPUs without AMX
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(
            f"unknown dtype {dtype!r}; valid values are: auto, {', '.join(_DTYPES)}"
        ) from None


def resolve_attention(attn_implementation: str | None) -> str:
    """SDPA unless asked otherwise; flash_attention_2 only when it is installed."""
    if attn_implementation in (None, "auto", "sdpa"):
        return "sdpa"
    if attn_implementation == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise ImportError(
                "attn_implementation='flash_attention_2' needs `pip install flash-attn`"
            ) from None
        return attn_implementation
    if attn_implementation == "eager":
        return attn_implementation
    raise ValueError(
        f"unknown attn_implementation {attn_implementation!r}; valid values are: sdpa, flash_attention_2, eager"
    )
