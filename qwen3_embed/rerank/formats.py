"""The official rerankers' prompts and defaults, each written once.

Text: the "Reranker Model / Transformers usage" block of QwenLM/Qwen3-Embedding's README (the
model card). VL: `src/models/qwen3_vl_reranker.py` of QwenLM/Qwen3-VL-Embedding. Both ask the
model whether the Document meets the Query and the Instruct, and read its `yes` / `no`.
"""

from __future__ import annotations

from ..vocabulary import Family

SYSTEM_PROMPT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".'
)
# Text: the pair's text sits between a fixed prefix and suffix (tokenised without special tokens
# added); the suffix opens the assistant turn with an empty think block.
TEXT_PREFIX = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
TEXT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
TEXT_PAIR_TEMPLATE = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"

# VL: user-turn text parts around the query's and the document's content.
VL_INSTRUCT_PREFIX = "<Instruct>: "
VL_QUERY_PREFIX = "<Query>:"
VL_DOCUMENT_PREFIX = "\n<Document>:"
# The official truncation cuts the tokens before the last 5 (`<|im_end|>\n<|im_start|>assistant\n`).
VL_KEPT_TAIL = 5

DEFAULT_INSTRUCTIONS: dict[Family, str] = {
    "text": "Given a web search query, retrieve relevant passages that answer the query",
    "vl": "Given a search query, retrieve relevant candidates that answer the query.",
}
DEFAULT_MAX_LENGTHS: dict[Family, int] = {"text": 8192, "vl": 10240}
YES_TOKEN, NO_TOKEN = "yes", "no"


def format_text_pair(query: str, document: str, instruction: str) -> str:
    return TEXT_PAIR_TEMPLATE.format(instruction=instruction, query=query, document=document)
