"""The text family (Qwen3-Embedding, and sentence-transformers-format text models), beside
`qwen3_embed.vl`: its backend (`backend`), host-side batch tensors (`packing`) and the attention
of padding-free batches (`packed_attention`). Needs only the core's dependencies."""
