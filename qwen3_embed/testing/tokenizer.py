"""A small byte-level BPE tokenizer with Qwen's special tokens, trained on the spot.

Real Qwen tokenizers are 150k-token byte-level BPEs; this one has the same kind of model,
pre-tokeniser and special tokens, so every code path (EOS post-processor or not, chat template,
vision pad tokens) is exercised without any download.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ENDOFTEXT = "<|endoftext|>"
QWEN_SPECIAL_TOKENS = [
    ENDOFTEXT,
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    "Represent the user's input.",
    "What is the capital of China? The capital of China is Beijing.",
    "Explain gravity. Gravity is a force that attracts two bodies towards each other.",
    "A dog on a beach. A cat on a sofa. Pictures, videos, images and documents.",
    "system user assistant Retrieve images that match the query",
    "0123456789 +-*/=()[]{}<>.,;:!?'\"@#$%^&_|~` \n\t",
    "Embeddings map text to vectors; similar texts get similar vectors.",
    "Les embeddings multilingues: 中文 日本語 한국어 русский العربية",
]


# A reranker reads its answer from the `yes` and `no` tokens: its tokenizer must hold both, as
# single tokens (trained from these lines, so that they are learnt as merges like in Qwen's BPE).
RERANKER_TRAINING_TEXT = [
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".',
    "<Instruct>: <Query>: <Document>: <think>\n\n</think>\n\n",
    "yes no yes no",
]


def build_qwen_style_tokenizer(
    vocab_size: int = 1024, append_eos: bool = True, reranker: bool = False
) -> Tokenizer:
    """Train the tokenizer; with `append_eos`, its post-processor appends <|endoftext|> like the
    shipped Qwen3-Embedding tokenizer.json does; with `reranker`, `yes` and `no` are tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = TRAINING_TEXT + (RERANKER_TRAINING_TEXT if reranker else [])
    tokenizer.train_from_iterator(corpus * 20, trainer=trainer)
    if reranker:
        missing = [word for word in ("yes", "no") if tokenizer.token_to_id(word) is None]
        if missing:
            raise RuntimeError(f"the trained reranker tokenizer lacks the token(s) {missing}")
    eos_id = tokenizer.token_to_id(ENDOFTEXT)
    if append_eos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A:0 {ENDOFTEXT}:0",
            pair=f"$A:0 {ENDOFTEXT}:0 $B:1 {ENDOFTEXT}:1",
            special_tokens=[(ENDOFTEXT, eos_id)],
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, directory: Path, chat_template: str | None = None) -> None:
    """Write it as a transformers fast tokenizer (tokenizer.json + tokenizer_config.json)."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token=ENDOFTEXT,
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:],
        model_max_length=131072,
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(directory)
