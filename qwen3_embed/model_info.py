"""Read what a checkpoint directory says about itself: family, sizes, pooling, normalisation.

The family comes from `config.json`'s `model_type`, never from the directory's name. A
sentence-transformers directory (`modules.json` + `1_Pooling/config.json`) is honoured for
pooling mode, normalisation and max length, so other embedding models work too; its
`config_sentence_transformers.json` gives the named prompts (`prompt_name="query"`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DimensionError, UnsupportedModelError
from .registry import DEFAULT_MAX_LENGTH, FAMILY_MIN_DIM, WEB_SEARCH_INSTRUCTION, ModelSpec
from .vocabulary import Family, PoolingMode

QWEN_TEXT_TYPES = ("qwen3",)
QWEN_VL_TYPES = ("qwen3_vl",)


@dataclass(frozen=True)
class ModelInfo:
    model_type: str
    family: Family
    hidden_size: int
    min_dim: int
    max_length: int
    pooling_mode: PoolingMode
    normalize: bool
    default_query_instruction: str | None
    is_qwen: bool  # Qwen rules apply: EOS appended, left padding, instruction prompt format
    # Named prompts of config_sentence_transformers.json, name -> literal prefix ("" = none), and
    # the one sentence-transformers applies when a call names none. Not hashed: a dict.
    prompts: dict[str, str] = field(default_factory=dict, hash=False)
    default_prompt_name: str | None = None

    def output_dim(self, dim: int | None, name: str = "dim") -> int:
        """The output dimension for `dim` (None = full size); a DimensionError names the valid
        range and the value as its caller's field `name` calls it. The one MRL rule:
        `Preparer.validate_dim` and the batch job's first look call it."""
        if dim is None:
            return self.hidden_size
        if (
            isinstance(dim, bool)
            or not isinstance(dim, int)
            or not self.min_dim <= dim <= self.hidden_size
        ):
            raise DimensionError(
                f"{name}={dim!r} is invalid for this model; valid values are integers in "
                f"[{self.min_dim}, {self.hidden_size}]"
            )
        return dim


@dataclass(frozen=True)
class SentenceTransformersLayout:
    pooling_mode: PoolingMode
    normalize: bool
    max_seq_length: int | None


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_sentence_transformers_layout(model_dir: Path) -> SentenceTransformersLayout | None:
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return None
    modules = _read_json(modules_file)
    types = {module["type"].rsplit(".", 1)[-1]: module for module in modules}
    transformer = types.get("Transformer")
    if transformer is None or transformer.get("path", "") not in ("", "."):
        raise UnsupportedModelError(
            f"{model_dir}: only sentence-transformers layouts whose Transformer module sits at the "
            "top of the directory are supported"
        )
    pooling_mode = "cls"
    if "Pooling" in types:
        pooling = _read_json(model_dir / types["Pooling"]["path"] / "config.json")
        chosen = [
            mode
            for mode, key in (
                ("lasttoken", "pooling_mode_lasttoken"),
                ("mean", "pooling_mode_mean_tokens"),
                ("cls", "pooling_mode_cls_token"),
            )
            if pooling.get(key)
        ]
        unsupported = [
            key
            for key in (
                "pooling_mode_max_tokens",
                "pooling_mode_mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens",
            )
            if pooling.get(key)
        ]
        if len(chosen) != 1 or unsupported:
            raise UnsupportedModelError(
                f"{model_dir}: pooling config must select exactly one of lasttoken, mean, cls; got {pooling}"
            )
        pooling_mode = chosen[0]
    max_seq_length = None
    bert_config = model_dir / "sentence_bert_config.json"
    if bert_config.is_file():
        max_seq_length = _read_json(bert_config).get("max_seq_length")
    return SentenceTransformersLayout(pooling_mode, "Normalize" in types, max_seq_length)


ST_CONFIG_FILE = "config_sentence_transformers.json"


# sentence-transformers' SentenceTransformer always has these two (its encode_query and
# encode_document use them); "" unless the model's config sets them.
BASE_PROMPTS = {"query": "", "document": ""}


def read_prompts(model_dir: Path) -> tuple[dict[str, str], str | None]:
    """(prompts, default_prompt_name) from `config_sentence_transformers.json`, as
    sentence-transformers (6.x) reads them: "query" and "document" always present, a null prompt
    is ""."""
    path = model_dir / ST_CONFIG_FILE
    if not path.is_file():
        return dict(BASE_PROMPTS), None
    config = _read_json(path)
    raw = config.get("prompts") or {}
    if not isinstance(raw, dict) or not all(
        isinstance(name, str) and (value is None or isinstance(value, str))
        for name, value in raw.items()
    ):
        raise UnsupportedModelError(f"{path}: 'prompts' must map names to strings; got {raw!r}")
    prompts = {**BASE_PROMPTS, **{name: value or "" for name, value in raw.items()}}
    default = config.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise UnsupportedModelError(
            f"{path}: default_prompt_name {default!r} is not one of its prompts "
            f"({', '.join(prompts) or 'none'})"
        )
    return prompts, default


def read_model_info(model_dir: Path, spec: ModelSpec | None = None) -> ModelInfo:
    config = _read_json(model_dir / "config.json")
    model_type = config.get("model_type", "")
    layout = read_sentence_transformers_layout(model_dir)
    if model_type in QWEN_VL_TYPES:
        family, is_qwen = "vl", True
        hidden_size = config["text_config"]["hidden_size"]
        position_limit = config["text_config"].get("max_position_embeddings", DEFAULT_MAX_LENGTH)
    elif model_type in QWEN_TEXT_TYPES:
        family, is_qwen = "text", True
        hidden_size = config["hidden_size"]
        position_limit = config.get("max_position_embeddings", DEFAULT_MAX_LENGTH)
    elif layout is not None:
        family, is_qwen = "text", False
        hidden_size = config["hidden_size"]
        position_limit = config.get("max_position_embeddings", DEFAULT_MAX_LENGTH)
    else:
        raise UnsupportedModelError(
            f"{model_dir}: model_type {model_type!r} is not supported; valid values are: "
            f"{', '.join(QWEN_TEXT_TYPES + QWEN_VL_TYPES)} (or any model in sentence-transformers format)"
        )
    if spec is not None and spec.family != family:
        raise UnsupportedModelError(
            f"{spec.model_id} is a {spec.family} model but its config says {model_type!r}"
        )
    max_length = min(DEFAULT_MAX_LENGTH, position_limit)
    prompts, default_prompt_name = read_prompts(model_dir)
    if layout is not None and layout.max_seq_length:
        max_length = min(max_length, layout.max_seq_length)
    return ModelInfo(
        model_type=model_type,
        family=family,
        hidden_size=hidden_size,
        min_dim=spec.min_dim if spec else min(FAMILY_MIN_DIM[family], hidden_size),
        max_length=spec.max_length if spec else max_length,
        pooling_mode=layout.pooling_mode if layout else "lasttoken",
        normalize=layout.normalize if layout else True,
        default_query_instruction=(
            spec.default_query_instruction if spec else WEB_SEARCH_INSTRUCTION if is_qwen else None
        ),
        is_qwen=is_qwen,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
    )
