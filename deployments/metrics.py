"""Prometheus metrics (exported by Ray's metrics agent, scraped from each node's metrics port).

Built inside the replicas (`ray.serve.metrics` adds the deployment / replica / application tags
from the replica context), so this module is imported by the deployments only. Names follow
Prometheus's conventions: base units in the name (`_seconds`; counts named by what they count),
`_total` on counters. Ray exports them with its `ray_` prefix (`ray_qwen3_embed_requests_total`).
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Histogram

_LATENCY_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
_TOKENS = [16, 64, 256, 1024, 4096, 16384, 65536, 262144]


class IngressMetrics:
    """Per API request, tagged by served model name and HTTP status."""

    def __init__(self) -> None:
        self.requests = Counter(
            "qwen3_embed_requests_total",
            description="API requests answered, by model and HTTP status code.",
            tag_keys=("model", "status"),
        )
        self.errors = Counter(
            "qwen3_embed_errors_total",
            description="API requests answered with an error, by model, HTTP status and error code.",
            tag_keys=("model", "status", "code"),
        )
        self.latency = Histogram(
            "qwen3_embed_request_duration_seconds",
            description="Time to answer an embeddings request, in seconds (ingress view).",
            boundaries=_LATENCY_S,
            tag_keys=("model",),
        )
        self.tokens = Counter(
            "qwen3_embed_tokens_total",
            description="Tokens embedded (prompt tokens of successful requests).",
            tag_keys=("model",),
        )
        self.inputs = Counter(
            "qwen3_embed_inputs_total",
            description="Inputs embedded (items of successful requests).",
            tag_keys=("model",),
        )

    def record(self, model: str, status: int, code: str | None, latency_s: float | None) -> None:
        tags = {"model": model, "status": str(status)}
        self.requests.inc(1, tags=tags)
        if status >= 400:
            self.errors.inc(1, tags={**tags, "code": code or "unknown"})
        if latency_s is not None:
            self.latency.observe(latency_s, tags={"model": model})

    def record_success(self, model: str, inputs: int, tokens: int) -> None:
        self.inputs.inc(inputs, tags={"model": model})
        self.tokens.inc(tokens, tags={"model": model})


class ModelMetrics:
    """Per batch, in the model replica."""

    def __init__(self, model: str) -> None:
        self._tags = {"model": model}
        self.batch_requests = Histogram(
            "qwen3_embed_batch_requests",
            description="API requests per dynamic batch.",
            boundaries=_SIZES,
            tag_keys=("model",),
        )
        self.batch_inputs = Histogram(
            "qwen3_embed_batch_inputs",
            description="Inputs per dynamic batch (all its requests together).",
            boundaries=_SIZES,
            tag_keys=("model",),
        )
        self.batch_tokens = Histogram(
            "qwen3_embed_batch_tokens",
            description="Real (unpadded) tokens per dynamic batch.",
            boundaries=_TOKENS,
            tag_keys=("model",),
        )
        self.queue_wait = Histogram(
            "qwen3_embed_queue_wait_seconds",
            description="Time a request waited in the batch queue before its batch started, in seconds.",
            boundaries=_LATENCY_S,
            tag_keys=("model",),
        )
        self.batch_latency = Histogram(
            "qwen3_embed_batch_duration_seconds",
            description="Time to embed one dynamic batch (all its token-budget forward passes), in seconds.",
            boundaries=_LATENCY_S,
            tag_keys=("model",),
        )

    def record_batch(
        self, requests: int, inputs: int, tokens: int, waits_s: list[float], latency_s: float
    ) -> None:
        self.batch_requests.observe(requests, tags=self._tags)
        self.batch_inputs.observe(inputs, tags=self._tags)
        self.batch_tokens.observe(tokens, tags=self._tags)
        for wait in waits_s:
            self.queue_wait.observe(wait, tags=self._tags)
        self.batch_latency.observe(latency_s, tags=self._tags)
