"""The tqdm progress bar of a long call (`Embedder.embed`, `Reranker.score_pairs`)."""

from __future__ import annotations

import sys
from typing import Any

# `show_progress_bar=None` draws a bar from this many inputs on, where someone can see it (a
# Jupyter kernel or a terminal): below it a call is short even on a CPU, and a bar per call of a
# loop over small chunks would be noise.
PROGRESS_BAR_MIN_ITEMS = 1000


def want_progress(show_progress_bar: bool | None, count: int) -> bool:
    if show_progress_bar is not None:
        return bool(show_progress_bar)
    return count >= PROGRESS_BAR_MIN_ITEMS and output_is_watched()


def output_is_watched() -> bool:
    """A Jupyter kernel (its stderr is a cell's output, though not a TTY) or a terminal; not a
    batch job's or a server's log."""
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


def progress_bar(total: int, desc: str = "embedding", unit: str = "input") -> Any:
    # tqdm comes with huggingface-hub (a dependency), and is imported only when a bar is drawn;
    # tqdm.auto picks the notebook widget in Jupyter (with ipywidgets), text elsewhere.
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=False)
