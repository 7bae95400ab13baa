"""The reranker's head: the (hidden -> 1) projection `w_yes - w_no` made from two rows of the
LM head, read straight from the checkpoint's files (never the whole vocabulary's matrix).

`sigmoid(h · (w_yes - w_no))` is the official VL score and equals the text model card's
`softmax([logit_no, logit_yes])[1]`. A checkpoint whose head is tied to the input embeddings
(Qwen3-Reranker-0.6B; `tie_word_embeddings`) has no `lm_head.weight`: its rows are the
embedding matrix's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UnsupportedModelError

HEAD_NAMES = ("lm_head.weight",)
# Input embeddings under the names transformers saves them (Qwen3ForCausalLM, a bare Qwen3Model,
# Qwen3VLForConditionalGeneration in transformers 5.x and 4.x).
EMBEDDING_NAMES = (
    "model.embed_tokens.weight",
    "embed_tokens.weight",
    "model.language_model.embed_tokens.weight",
    "language_model.model.embed_tokens.weight",
    "model.language_model.model.embed_tokens.weight",
)


def ties_embeddings(config: dict) -> bool:
    text_config = config.get("text_config") or {}
    tied = config.get("tie_word_embeddings", text_config.get("tie_word_embeddings"))
    return True if tied is None else bool(tied)  # transformers' default is True


def _tensor_files(model_dir: Path) -> dict[str, Path]:
    """tensor name -> the safetensors file holding it."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: model_dir / file for name, file in weight_map.items()}
    single = model_dir / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(single, framework="pt") as handle:
            names = handle.keys()  # a safetensors handle is not iterable itself
        return dict.fromkeys(names, single)
    raise UnsupportedModelError(
        f"{model_dir}: no model.safetensors (or its index); a reranker's head is read from "
        "safetensors files"
    )


def read_score_vector(model_dir: Path, yes_id: int, no_id: int) -> torch.Tensor:
    """(H,) float32: `w_yes - w_no` from the LM head (or the tied input embeddings)."""
    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    files = _tensor_files(model_dir)
    names = HEAD_NAMES + (EMBEDDING_NAMES if ties_embeddings(config) else ())
    name = next((candidate for candidate in names if candidate in files), None)
    if name is None:
        raise UnsupportedModelError(
            f"{model_dir}: no LM head to score with (looked for {', '.join(names)}); a reranker "
            "checkpoint keeps its LM head, or ties it to the input embeddings"
        )
    with safe_open(files[name], framework="pt") as handle:
        matrix = handle.get_slice(name)
        rows = matrix.get_shape()[0]
        for token_id in (yes_id, no_id):
            if not 0 <= token_id < rows:
                raise UnsupportedModelError(
                    f"{model_dir}: token id {token_id} is outside the LM head's {rows} rows"
                )
        yes = matrix[yes_id : yes_id + 1].to(torch.float32)[0]
        no = matrix[no_id : no_id + 1].to(torch.float32)[0]
    return yes - no
