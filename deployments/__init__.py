"""deployments: the Ray Serve application serving `qwen3_embed` over an OpenAI-compatible API.

    HTTP proxy -> EmbeddingsIngress (FastAPI: auth, limits, media, routing by `model`)
               -> EmbeddingModel (one per served model: one Embedder per replica, continuous batching)
               -> RerankModel (one per served reranker: /v1/rerank, /v2/rerank, /score)

Modules, one job each: `config` (the typed ServeAppConfig), `schemas` (request/response bodies),
`errors` (OpenAI error shape), `security` (API keys), `inputs` + `media_fetch` (items, media and
SSRF-safe URL fetching), `protocol` (ingress <-> model messages), `metrics`, `ingress`,
`model_deployment`, `rerank_schemas` + `rerank_routes` + `rerank_protocol` + `rerank_deployment`
(the rerank API and its replicas), `app` (the builder: `deployments.app:build_app`), `cli` (`qwen3-embed serve`).
See docs/serving.md. Nothing here is imported by `qwen3_embed`, and importing this package
loads neither Ray nor torch.
"""
