"""The rerankers' halves: prompt formats, pair preparation per family, and the yes/no head.
`qwen3_embed.Reranker` drives them (see `qwen3_embed.reranker`)."""
