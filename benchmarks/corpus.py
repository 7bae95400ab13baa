"""Synthetic corpora with a realistic spread of lengths (log-normal in tokens)."""

from __future__ import annotations

import numpy as np

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "capital",
    "of",
    "china",
    "is",
    "beijing",
    "gravity",
    "force",
    "that",
    "attracts",
    "two",
    "bodies",
    "towards",
    "each",
    "other",
    "embeddings",
    "map",
    "text",
    "to",
    "vectors",
    "similar",
    "texts",
    "get",
    "pictures",
    "videos",
    "images",
    "and",
    "documents",
    "represent",
    "user",
    "input",
    "retrieve",
    "relevant",
    "passages",
]


def lognormal_lengths(
    count: int, low: int, high: int, seed: int = 0, median: float = 120.0
) -> list[int]:
    """Word counts drawn log-normally (sigma 1) around `median`, clipped to [low, high]."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(median), 1.0, count), low, high).astype(int).tolist()


def make_texts(lengths: list[int], seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed + 1)
    return [" ".join(rng.choice(WORDS, size=n)) for n in lengths]


def make_corpus(
    count: int, low: int = 8, high: int = 2048, seed: int = 0, median: float = 120.0
) -> list[str]:
    return make_texts(lognormal_lengths(count, low, high, seed, median), seed)
