"""Make a benchmark checkpoint a sentence-transformers directory (as the Qwen3-Embedding
releases are): `modules.json` + last-token `1_Pooling` + `2_Normalize`, so peers that load
sentence-transformers models (infinity) read the same pooling the core uses."""

from __future__ import annotations

import json
from pathlib import Path


def write_sentence_transformers_files(model_dir: Path, hidden_size: int, max_length: int) -> Path:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (model_dir / "modules.json").write_text(json.dumps(modules, indent=2))
    (model_dir / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_length, "do_lower_case": False})
    )
    pooling = model_dir / "1_Pooling"
    pooling.mkdir(exist_ok=True)
    (pooling / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": hidden_size,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": False,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
                "pooling_mode_weightedmean_tokens": False,
                "pooling_mode_lasttoken": True,
                "include_prompt": True,
            }
        )
    )
    (model_dir / "2_Normalize").mkdir(exist_ok=True)
    _tokenizer_class_for_older_transformers(model_dir)
    return model_dir


def _tokenizer_class_for_older_transformers(model_dir: Path) -> None:
    """transformers 5 saves `TokenizersBackend`, a class transformers 4 (infinity's) lacks, and
    `extra_special_tokens` as a list where 4 wants `additional_special_tokens`: the same
    tokenizer.json-backed tokenizer, spelled so both read it (the benchmark checks that the
    peer's vectors equal the core's before timing)."""
    config_file = model_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        del config["extra_special_tokens"]
        config["additional_special_tokens"] = extra
    config_file.write_text(json.dumps(config, indent=2))
