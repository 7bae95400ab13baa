"""Score a checkpoint with MTEB (the `[mteb]` extra), through the same core as everything else:

    import mteb
    from qwen3_embed.mteb_adapter import MTEBEncoder

    results = mteb.evaluate(MTEBEncoder("Qwen/Qwen3-Embedding-0.6B"), mteb.get_tasks(["STS12"]))

`MTEBEncoder` implements mteb 2.x's `EncoderProtocol` (`encode(inputs: DataLoader[BatchedInput],
*, task_metadata, hf_split, hf_subset, prompt_type, **kwargs)`, `similarity`,
`similarity_pairwise`, `mteb_model_meta`) without subclassing mteb's classes, so importing this
module needs no mteb; mteb is imported where it is used.

Prompts follow mteb's own reference wrappers for these models (`qwen3_models.py`,
`qwen3_vl_embedding_models.py`), so scores are comparable with theirs:

- Qwen3 models (instruction-following): a query gets the task's instruction (the task's
  `metadata.prompt`, per prompt type when it is a dict, else its task type's default prompt),
  in the Qwen format of the core (`Instruct: {task}\\nQuery:{text}`; the system turn for VL).
  Documents get none for text models; for VL models they get the task's instruction too, as
  mteb's Qwen3-VL wrapper does (`instruct_documents` overrides both defaults). A pair task
  without a query/document side (STS, classification) instructs every input.
- Other models (e.g. MiniLM): the model's named prompts from `config_sentence_transformers.json`,
  chosen as mteb's sentence-transformers wrapper chooses them (`{task}-{type}`, `{task}`,
  `{task type}-{type}`, `{task type}`, `{type}`), else none.

Text and image inputs are embedded (images as VL items `{"image": ..., "text"?: ...}`); audio and
video tasks are refused. The core refuses empty texts, so a task with an empty document fails
with an InputError naming it rather than scoring a made-up vector.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .embedder import Embedder
from .errors import InputError, MissingExtraError

if TYPE_CHECKING:
    import torch

INSTALL_HINT = "pip install 'qwen3-embed[mteb]'"
# Encode keyword arguments mteb passes that the core has no use for: it batches by tokens
# (`max_batch_tokens` at load time), not by a number of items.
IGNORED_ENCODE_KWARGS = ("batch_size",)


def require_mteb() -> None:
    try:
        importlib.import_module("mteb")
    except ImportError:
        raise MissingExtraError(
            f"scoring with MTEB needs the [mteb] extra; install it with: {INSTALL_HINT}"
        ) from None


class MTEBEncoder:
    """An `Embedder` as an MTEB encoder. `MTEBEncoder(source, revision, device=...)` loads one
    (what mteb's own loaders are called with; other keywords go to `Embedder.from_pretrained`);
    `MTEBEncoder.from_embedder(embedder)` wraps one already loaded.

    `dim` scores a Matryoshka truncation; `task_instructions` maps a task name to the instruction
    its queries get instead of the task's own; `name` is the model name MTEB records the results
    under (default: the hub id, or `local/<directory name>` for a local checkpoint)."""

    def __init__(
        self,
        model_name: str | os.PathLike,
        revision: str | None = None,
        *,
        device: str | None = None,
        dim: int | None = None,
        instruct_documents: bool | None = None,
        task_instructions: Mapping[str, str] | None = None,
        name: str | None = None,
        **load_kwargs: Any,
    ) -> None:
        require_mteb()
        embedder = Embedder.from_pretrained(
            model_name, device=device or "auto", revision=revision, **load_kwargs
        )
        self._attach(embedder, dim, instruct_documents, task_instructions, name, revision)

    @classmethod
    def from_embedder(
        cls,
        embedder: Embedder,
        *,
        dim: int | None = None,
        instruct_documents: bool | None = None,
        task_instructions: Mapping[str, str] | None = None,
        name: str | None = None,
        revision: str | None = None,
    ) -> MTEBEncoder:
        require_mteb()
        encoder = cls.__new__(cls)
        encoder._attach(embedder, dim, instruct_documents, task_instructions, name, revision)
        return encoder

    def _attach(
        self,
        embedder: Embedder,
        dim: int | None,
        instruct_documents: bool | None,
        task_instructions: Mapping[str, str] | None,
        name: str | None,
        revision: str | None,
    ) -> None:
        self.embedder = embedder
        self.dim = embedder.validate_dim(dim)
        if instruct_documents is None:
            instruct_documents = embedder.family == "vl"  # as mteb's reference wrappers do
        self.instruct_documents = instruct_documents
        self.task_instructions = dict(task_instructions or {})
        self.name = name or _model_name(embedder.source)
        self.revision = revision

    # ----------------------------------------------------------------- protocol
    @property
    def mteb_model_meta(self) -> Any:
        from mteb.models.model_meta import ModelMeta

        info = self.embedder.info
        return ModelMeta.create_empty(
            {
                "name": self.name,
                "revision": self.revision,
                "modalities": ["text", "image"] if info.family == "vl" else ["text"],
                "embed_dim": self.dim,
                "max_tokens": self.embedder.max_length,
                "similarity_fn_name": "cosine",
                "use_instructions": info.is_qwen,
                "framework": ["PyTorch"],
            }
        )

    def encode(
        self,
        inputs: Iterable[Mapping[str, Any]],
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """(N, dim) float32 vectors of every input of the data loader, in order."""
        precision = kwargs.pop("precision", None)
        if precision not in (None, "float32"):
            raise ValueError(
                f"precision={precision!r} is not supported; this encoder gives float32"
            )
        show_progress_bar = kwargs.pop("show_progress_bar", None)
        for key in IGNORED_ENCODE_KWARGS:
            kwargs.pop(key, None)
        if kwargs:
            raise TypeError(f"unexpected encode arguments: {', '.join(sorted(kwargs))}")
        items = self._items(inputs)
        call: dict[str, Any] = {}
        if self.embedder.info.is_qwen:
            call["instruction"] = self.instruction(task_metadata, prompt_type)
        else:
            from mteb.models.abs_encoder import get_prompt_name

            call["prompt_name"] = get_prompt_name(
                self.embedder.prompts or None, task_metadata, prompt_type
            )
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        try:
            return self.embedder.encode(
                items, truncate_dim=self.dim, show_progress_bar=show_progress_bar, **call
            )
        except InputError as error:
            # Name the task and split: "input[12]" alone does not say where to look.
            where = f"{task_metadata.name} ({hf_subset}/{hf_split}, {prompt_type or 'inputs'})"
            raise InputError(f"{where}: {error}", code=error.code) from error

    def instruction(self, task_metadata: Any, prompt_type: Any = None) -> str | None:
        """The instruction a Qwen3 model's inputs of this task and prompt type get (None: none)."""
        from mteb.types import PromptType

        if prompt_type == PromptType.document and not self.instruct_documents:
            return None
        if task_metadata.name in self.task_instructions:
            return self.task_instructions[task_metadata.name]
        prompt = task_metadata.prompt
        if isinstance(prompt, Mapping):
            # mteb's AbsEncoder.get_instruction: a dict without this prompt type gives none
            # (no fallback); with no prompt type, mteb's Qwen3 template takes its first value.
            if prompt_type is None:
                return next(iter(prompt.values()), None) or None
            return prompt.get(PromptType(prompt_type).value) or None
        if prompt:
            return str(prompt)
        from mteb.abstasks.abstask import get_abstask_prompt

        return get_abstask_prompt(task_metadata.name) or None

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)

    # ------------------------------------------------------------------ inputs
    def _items(self, inputs: Iterable[Mapping[str, Any]]) -> list[Any]:
        """A batch is columns (`text`, `image`, ...); the core takes one item per input."""
        vl = self.embedder.family == "vl"
        items: list[Any] = []
        for batch in inputs:
            unsupported = sorted({"audio", "video"} & set(batch))
            if unsupported:
                raise ValueError(
                    f"{', '.join(unsupported)} inputs are not supported by this encoder"
                )
            texts, images = batch.get("text"), batch.get("image")
            if images is not None and not vl:
                raise ValueError(
                    f"this is a text model ({self.embedder.info.model_type!r}); image tasks "
                    "need a Qwen3-VL-Embedding model"
                )
            count = len(texts if texts is not None else images)
            for position in range(count):
                text = texts[position] if texts is not None else None
                image = images[position] if images is not None else None
                if image is None:
                    items.append(text)
                else:
                    items.append(
                        {"image": image} if text in (None, "") else {"image": image, "text": text}
                    )
        return items


def _model_name(source: str) -> str:
    """MTEB wants `organization/model`: a hub id is one; a local path becomes `local/<name>`."""
    if "://" not in source and not os.path.exists(source) and source.count("/") == 1:
        return source
    return f"local/{os.path.basename(os.path.normpath(source.split('://', 1)[-1])) or 'model'}"
