"""Embedding model or reranker? What a checkpoint is for, and the refusal when the wrong class
loads it.

`config.json` cannot always tell: Qwen3-Embedding and Qwen3-Reranker checkpoints are both saved
as `Qwen3ForCausalLM`, Qwen3-VL-Embedding and Qwen3-VL-Reranker both as
`Qwen3VLForConditionalGeneration`, and a tied 0.6B head leaves no `lm_head` tensor to look for.
So the task is decided from these signals, the first that speaks wins:

1. an explicit `task=` ("embed" or "rerank");
2. a hub id this project knows (`registry.SEED_MODELS`, `registry.SEED_RERANKERS`);
3. a sentence-transformers `modules.json` in the checkpoint: the embedding releases ship one,
   the rerankers do not;
4. the official inference script the hub repos of the VL models ship: `scripts/qwen3_vl_embedding.py`
   (embed) or `scripts/qwen3_vl_reranker.py` (rerank);
5. the name: the last part of the hub id or directory containing "reranker" (rerank) or
   "embedding" (embed), as the published ids and their local copies do;
6. none of these: undecided, and the class the user called decides (`Embedder` embeds,
   `Reranker` reranks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from .errors import UnsupportedModelError

Task = Literal["embed", "rerank"]
TASKS: tuple[Task, ...] = get_args(Task)
CLASS_FOR_TASK: dict[Task, str] = {"embed": "Embedder", "rerank": "Reranker"}
SCRIPT_FOR_TASK: dict[Task, str] = {
    "embed": "scripts/qwen3_vl_embedding.py",
    "rerank": "scripts/qwen3_vl_reranker.py",
}


@dataclass(frozen=True)
class TaskSignal:
    task: Task | None  # None: nothing says
    reason: str


def check_task_value(task: str | None) -> Task | None:
    if task is not None and task not in TASKS:
        raise ValueError(f"task={task!r} is invalid; valid values are: {', '.join(TASKS)}")
    return task  # type: ignore[return-value]


def detect_task(source: str, model_dir: Path, task: str | None = None) -> TaskSignal:
    """What `source` (resolved to `model_dir`) is for, and why (see the module docstring)."""
    from .registry import lookup_task

    given = check_task_value(task)
    if given is not None:
        return TaskSignal(given, f"task={given!r} was given")
    known = lookup_task(source)
    if known is not None:
        return TaskSignal(known, f"{source} is a published {_noun(known)}")
    if (model_dir / "modules.json").is_file():
        return TaskSignal(
            "embed",
            "it has a sentence-transformers modules.json, which embedding checkpoints ship "
            "and rerankers do not",
        )
    for candidate, script in SCRIPT_FOR_TASK.items():
        if (model_dir / script).is_file():
            return TaskSignal(candidate, f"it ships the official {script}")
    name = os.path.basename(os.path.normpath(str(source))).lower()
    if "reranker" in name:
        return TaskSignal("rerank", f"its name {name!r} says reranker")
    if "embedding" in name:
        return TaskSignal("embed", f"its name {name!r} says embedding")
    return TaskSignal(None, "nothing in the checkpoint says")


def require_task(source: str, model_dir: Path, wanted: Task, task: str | None = None) -> None:
    """Refuse a checkpoint the signals say is for the other task, naming the class to use."""
    given = check_task_value(task)
    if given is not None and given != wanted:
        raise UnsupportedModelError(
            f"task={given!r} is for qwen3_embed.{CLASS_FOR_TASK[given]}, not "
            f"{CLASS_FOR_TASK[wanted]}; load {source} with {CLASS_FOR_TASK[given]}"
        )
    signal = detect_task(source, model_dir, given)
    if signal.task is not None and signal.task != wanted:
        raise UnsupportedModelError(
            f"{source} is {_a(_noun(signal.task))} checkpoint ({signal.reason}); load it with "
            f"qwen3_embed.{CLASS_FOR_TASK[signal.task]}, not {CLASS_FOR_TASK[wanted]} (pass "
            f"task={wanted!r} if it really is {_a(_noun(wanted))})"
        )


def _noun(task: Task) -> str:
    return "reranker" if task == "rerank" else "embedding model"


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"
