"""Benchmark: what chunking costs the batch job.

The chunked job (`--chunk-tokens 512 --chunk-overlap 32`) on a corpus of long documents
(log-normal lengths, median ~3k tokens, two over 32k) against the same job on the same chunks
split upstream (each chunk's text a row of its own, cut by the same core rule,
`qwen3_embed.chunking`), so both embed exactly the same token sequences. The difference is what
chunking inside the job adds: tokenising each whole document with offsets, checking each chunk's
count, repeating carried columns, and one prepare block per replica call. Target: the chunked
job keeps >= 90% of the pre-split job's tokens/s.

Both jobs run on one local Ray cluster, one replica each, the chunked job first (so a warm OS
cache, if anything, favours the baseline). Tokens/s are counted over each job's pipeline once
its replica is ready (`execute_seconds - replica_ready`), and over the whole pipeline.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from .common import build_model, log, row, shape_for, start_ray
from .corpus import WORDS

CHUNK_TOKENS, OVERLAP = 512, 32
QUICK_CHUNK_TOKENS, QUICK_OVERLAP = 64, 8  # --quick: short documents, still several chunks each


def long_documents(tokenizer, count: int, median_tokens: int, seed: int = 0) -> list[str]:
    """Documents of sentences and paragraphs whose token counts are log-normal (sigma 1) around
    `median_tokens`; the two longest are made over 32k tokens when the count allows."""
    rng = np.random.default_rng(seed)
    wanted = np.clip(rng.lognormal(np.log(median_tokens), 1.0, count), 50, 60_000).astype(int)
    if count >= 8:
        wanted[np.argsort(wanted)[-2:]] = [33_000, 36_000]
    sample = " ".join(rng.choice(WORDS, size=400)) + "."
    per_word = len(tokenizer(sample, add_special_tokens=False)["input_ids"]) / 400
    texts = []
    for tokens in wanted:
        words = rng.choice(WORDS, size=max(1, int(tokens / per_word)))
        sentences = [" ".join(words[i : i + 14]) + "." for i in range(0, len(words), 14)]
        paragraphs = [" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6)]
        texts.append("\n\n".join(paragraphs))
    return texts


def _job(corpus: Path, output: Path, model: Path, device: torch.device, **fields):
    from pipelines import JobConfig, run_embedding_job

    config = JobConfig(
        input=str(corpus),
        output=str(output),
        model=str(model),
        id_column="id",
        num_replicas=1,
        cpus_per_replica=2,
        gpus_per_replica=1 if device.type == "cuda" else 0,
        progress=False,
        **fields,
    )
    manifest = run_embedding_job(config).manifest
    assert manifest["consistent"], manifest
    execute = manifest["execute_seconds"]
    warm = execute - manifest["phases"].get("replica_ready", 0.0)
    tokens = manifest["this_run"]["tokens"]
    return {
        "rows": manifest["rows_embedded"],
        "tokens": tokens,
        "execute_seconds": execute,
        "warm_seconds": warm,
        "tokens_per_second_warm": tokens / warm,
        "tokens_per_second_pipeline": tokens / execute,
        "duplicates_reused": manifest.get("duplicates_reused", 0),
    }


def run(device: torch.device, quick: bool) -> dict:
    import ray

    from qwen3_embed import Preparer
    from qwen3_embed.chunking import chunk_text

    shape = shape_for(quick)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model_dir = build_model(shape, tmp_path / "model")
        preparer = Preparer.from_pretrained(model_dir, max_length=40_000)
        tokenizer = preparer.impl.tokenizer
        count, median = (6, 300) if quick else (32, 3000)
        size, overlap = (QUICK_CHUNK_TOKENS, QUICK_OVERLAP) if quick else (CHUNK_TOKENS, OVERLAP)
        texts = long_documents(tokenizer, count, median)
        lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
        documents = tmp_path / "documents.jsonl"
        with open(documents, "w", encoding="utf-8") as handle:
            for index, text in enumerate(texts):
                handle.write(json.dumps({"id": f"doc-{index:04d}", "text": text}) + "\n")
        presplit = tmp_path / "chunks.jsonl"
        chunks = 0
        with open(presplit, "w", encoding="utf-8") as handle:
            for index, text in enumerate(texts):
                for chunk in chunk_text(preparer, text, size, overlap):
                    piece = text[chunk.char_start : chunk.char_end]
                    record = {"id": f"doc-{index:04d}#{chunk.index}", "text": piece}
                    handle.write(json.dumps(record) + "\n")
                    chunks += 1
        log(
            f"{count} documents, {sum(lengths)} tokens (median {int(np.median(lengths))}, "
            f"max {max(lengths)}), {chunks} chunks of <= {size} tokens"
        )

        ray_start_s = start_ray()
        try:
            chunked = _job(
                documents,
                tmp_path / "out-chunked",
                model_dir,
                device,
                chunk_tokens=size,
                chunk_overlap=overlap,
            )
            log(f"chunked job: {chunked}")
            baseline = _job(presplit, tmp_path / "out-presplit", model_dir, device)
            log(f"pre-split job: {baseline}")
        finally:
            ray.shutdown()
    assert chunked["tokens"] == baseline["tokens"] and chunked["rows"] == baseline["rows"] == chunks
    ratio = chunked["tokens_per_second_warm"] / baseline["tokens_per_second_warm"]
    ratio_pipeline = chunked["tokens_per_second_pipeline"] / baseline["tokens_per_second_pipeline"]
    return {
        "benchmark": "chunking",
        "model": shape.name,
        "documents": count,
        "document_tokens": sum(lengths),
        "document_tokens_median": int(np.median(lengths)),
        "document_tokens_max": max(lengths),
        "chunks": chunks,
        "chunk_tokens": size,
        "chunk_overlap": overlap,
        "chunked": chunked,
        "presplit": baseline,
        "ray_startup_seconds": ray_start_s,
        "throughput_ratio_chunked_over_presplit": ratio,
        "throughput_ratio_pipeline": ratio_pipeline,
        "rows": [
            row(
                f"chunked job vs the same chunks split upstream ({shape.name}, {count} documents, "
                f"median {int(np.median(lengths))} / max {max(lengths)} tokens, {chunks} chunks "
                f"of <= {size})",
                f"{chunked['tokens_per_second_warm']:.0f} vs "
                f"{baseline['tokens_per_second_warm']:.0f} tok/s once the replica is ready = "
                f"**{ratio:.2f}x** (whole pipeline {ratio_pipeline:.2f}x)",
                ">= 0.90x",
                ratio >= 0.90,
            )
        ],
    }
