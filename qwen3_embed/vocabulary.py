"""The core's closed vocabularies, each spelt once as a `Literal` with its values as a tuple.

Type checkers hold annotated code to them, and validation (the options' choices, pydantic
configs, argparse choices) reads the tuples, so adding a value is one edit here.
"""

from __future__ import annotations

from typing import Literal, get_args

Family = Literal["text", "vl"]  # Qwen3-Embedding-style text models / Qwen3-VL-Embedding
FAMILIES: tuple[Family, ...] = get_args(Family)

# sentence-transformers' Pooling modules this project reads (Qwen3 ships lasttoken).
PoolingMode = Literal["lasttoken", "mean", "cls"]
POOLING_MODES: tuple[PoolingMode, ...] = get_args(PoolingMode)

ForwardMode = Literal["auto", "padded", "packed"]  # "auto" is resolved at load time
FORWARD_MODES: tuple[ForwardMode, ...] = get_args(ForwardMode)

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[Dtype, ...] = get_args(Dtype)

AttnImplementation = Literal["auto", "sdpa", "flash_attention_2", "eager"]
ATTN_IMPLEMENTATIONS: tuple[AttnImplementation, ...] = get_args(AttnImplementation)

# What an input item can break (`InputError.code`): a batch job's `_errors` row code, and (through
# the Serve layer's `API_ANSWERS` table) the HTTP API's answer.
InputErrorCode = Literal[
    "invalid_input", "input_too_long", "input_too_large_for_device", "decode_limit_exceeded"
]
INPUT_ERROR_CODES: tuple[InputErrorCode, ...] = get_args(InputErrorCode)
