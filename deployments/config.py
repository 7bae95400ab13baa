"""The serving layer's one typed configuration.

`ServeAppConfig` is what the app builder (`deployments.app:build_app`) takes as `args` in a Serve
config YAML and what `qwen3-embed serve` builds from its flags. It is validated once, here, and
then passed (frozen) to the deployments; no raw dicts travel between layers. Every field has a
description and a default that is safe for a public endpoint. `ServerConfig` holds what the
command itself runs (the HTTP proxy, the Ray it joins or starts), not the app.

Each config is a `ReadableConfig` (`qwen3_embed_layers.config_base`), the batch job's base too:
frozen, unknown keys refused, and a refused value raises `InvalidConfigError` naming every
refused field by its path ("invalid serve app config: models[0].max_batch_tokens must be an
integer >= 1, got 0"), whether it came from YAML, keyword arguments or `qwen3-embed serve`'s
flags (which are generated from these fields: `deployments.cli`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from qwen3_embed_layers.config_base import LoadFields, ReadableConfig, ReplicaFields

from .ray_env import HttpProxy

MiB = 1024 * 1024
# Auto-sized ingress: slots beyond what the models can hold (see IngressConfig.max_ongoing_requests).
INGRESS_HEADROOM = 256


class BatchingConfig(ReadableConfig):
    """The model deployment's `user_config`: changed at run time without reloading the weights
    (`reconfigure` passes it to the replica's continuous-batching queue)."""

    what = "serve batching config"

    max_batch_size: int = Field(
        32,
        ge=1,
        description="most requests one batch collects (each request may hold several inputs)",
    )
    batch_wait_ms: float = Field(
        0.0,
        ge=0,
        description=(
            "how long an under-full batch may wait for more requests, counted from its oldest "
            "request's arrival, in ms; 0 = a request that finds the device idle starts at once "
            "(requests arriving while it is busy still batch)"
        ),
    )


class ModelConfig(LoadFields, ReplicaFields, ReadableConfig):
    """One served model: how to load it (the core's `LoadOptions` knobs: model, revision, device,
    dtype, max_length, max_batch_tokens, forward_mode, attn_implementation, compile) and how its
    deployment (replicas, batching, queue) runs."""

    what = "serve model config"

    served_model_name: str | None = Field(
        None, min_length=1, description="the name clients send as `model` (default: `model` itself)"
    )
    task: Literal["embed", "rerank"] = Field(
        "embed",
        description="embed: an embedding model (Embedder) answering /v1/embeddings; rerank: a "
        "reranker (qwen3_embed.Reranker) answering /v1/rerank, /v2/rerank and /score",
    )
    max_queued_tokens: int | None = Field(
        None,
        ge=1,
        description="tokens waiting in one replica's batch queue (or being prepared for it, "
        "counted by an upper bound from the text length) before callers get 429 + Retry-After; "
        "a request always fits an empty queue. None = auto: what the replica finishes in 15 s "
        "at the token rate its batches have run (at least one full batch, max_batch_tokens)",
    )
    autoscale: tuple[int, int] | None = Field(
        None,
        description="(min_replicas, max_replicas) for Serve autoscaling instead of the fixed "
        "num_replicas",
    )
    # Serve's own defaults: scale up after 30 s of high load, down after 10 min of low load (a
    # lull does not cost a cold start). Short delays suit bursty traffic on warm nodes, and tests.
    upscale_delay_s: float = Field(
        30.0,
        ge=0,
        description="with autoscale: seconds the load must ask for more replicas before Serve "
        "adds them",
    )
    downscale_delay_s: float = Field(
        600.0,
        ge=0,
        description="with autoscale: seconds the load must ask for fewer replicas before Serve "
        "removes them",
    )
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig, description="dynamic batching (user_config)"
    )
    max_ongoing_requests: int = Field(
        64,
        ge=1,
        description="requests one replica holds at once; keep >= max_batch_size to fill batches",
    )
    max_queued_requests: int = Field(
        256, ge=1, description="requests waiting for a replica before callers get 429 + Retry-After"
    )
    retry_after_s: float = Field(
        1.0, ge=0, description="Retry-After sent with 429 when the queue is full"
    )
    calibration_ranges: tuple[tuple[float, ...], tuple[float, ...]] | None = Field(
        None,
        description="int8/uint8 ranges [[min per dim...], [max per dim...]] for embed_dtype "
        "int8/uint8 (the CLI's --calibration reads them from a batch job's _manifest.json)",
    )

    @field_validator("calibration_ranges")
    @classmethod
    def _check_ranges(cls, value: Any) -> Any:
        if value is not None:
            from qwen3_embed.precision import check_ranges

            check_ranges(value, len(value[0]))
        return value

    @property
    def name(self) -> str:
        return self.served_model_name or self.model

    @field_validator("autoscale")
    @classmethod
    def _check_autoscale(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None:
            low, high = value
            if low < 0 or high < 1 or low > high:
                raise ValueError(
                    f"autoscale must be (min, max) with 0 <= min <= max and max >= 1, got {value}"
                )
        return value


class RequestLimits(ReadableConfig):
    """Per-request limits, checked before any device time is spent."""

    what = "serve limits config"

    max_request_bytes: int = Field(32 * MiB, ge=1, description="HTTP body size (413 beyond)")
    max_inputs_per_request: int = Field(2048, ge=1, description="items in `input` (400 beyond)")
    max_chars_per_request: int = Field(
        1_000_000,
        ge=1,
        description="characters of all texts and instructions together (413 beyond)",
    )
    max_tokens_per_request: int = Field(
        300_000, ge=1, description="tokens of all inputs together after tokenisation (413 beyond)"
    )


class MediaPolicy(ReadableConfig):
    """Where images and videos may come from and how large they may be (VL models only).

    Base64 data URIs are always accepted; http(s) URLs only with `allow_url_fetch`, only to hosts
    on `url_allowed_hosts`, and never to loopback, private, link-local (cloud metadata), multicast
    or reserved addresses unless a network is listed in `url_allowed_networks`. Local paths and
    file:// URLs are always refused.
    """

    what = "serve media config"

    max_media_bytes: int = Field(
        20 * MiB, ge=1, description="bytes of one image or video, decoded (413 beyond)"
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="width x height of one image or frame (413 beyond)"
    )
    max_item_media_bytes: int = Field(
        64 * MiB,
        ge=1,
        description="bytes of all images, videos and frames of one item (413 beyond)",
    )
    max_media_per_request: int = Field(
        32, ge=0, description="images + videos (+ frames) in one request (413 beyond)"
    )
    allow_url_fetch: bool = Field(False, description="fetch http(s) media URLs at all")
    url_allowed_hosts: tuple[str, ...] = Field(
        (),
        description="hosts URLs may name: exact names, '*.example.com' for subdomains, or '*' for any",
    )
    url_allowed_networks: tuple[str, ...] = Field(
        (), description="CIDRs exempt from the private-address ban (e.g. an in-cluster media store)"
    )
    url_fetch_timeout_s: float = Field(
        10.0, gt=0, description="whole fetch of one URL, redirects included"
    )
    url_max_redirects: int = Field(3, ge=0, description="redirects followed, each re-checked")

    @field_validator("url_allowed_hosts")
    @classmethod
    def _check_hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(host.strip().lower().rstrip(".") for host in hosts)
        for host in cleaned:
            if not host or not re.fullmatch(r"\*|(\*\.)?[a-z0-9.\-:\[\]_]+", host):
                raise ValueError(f"invalid host pattern {host!r}; use 'name', '*.domain' or '*'")
        return cleaned

    @field_validator("url_allowed_networks")
    @classmethod
    def _check_networks(cls, networks: tuple[str, ...]) -> tuple[str, ...]:
        for network in networks:
            ipaddress.ip_network(network, strict=False)  # raises ValueError naming the bad value
        return networks

    @model_validator(mode="after")
    def _hosts_needed(self) -> MediaPolicy:
        if self.allow_url_fetch and not self.url_allowed_hosts:
            raise ValueError(
                "allow_url_fetch needs url_allowed_hosts (use ['*'] to allow any public host)"
            )
        return self


class AuthConfig(ReadableConfig):
    """Bearer API keys, read by the ingress replica itself so they never travel in deployment
    arguments, the Serve config or a command line. With neither source set, the API is open."""

    what = "serve auth config"

    api_key_env: str | None = Field(
        None,
        description="name of an environment variable holding comma-separated keys (set on every node)",
    )
    api_key_file: str | None = Field(
        None, description="path (on every node) of a file with one key per line"
    )

    @property
    def enabled(self) -> bool:
        return bool(self.api_key_env or self.api_key_file)


class IngressConfig(ReadableConfig):
    """The HTTP ingress deployment."""

    what = "serve ingress config"

    num_replicas: int = Field(1, ge=1, description="ingress replicas")
    cpus_per_replica: float = Field(0.25, ge=0, description="CPUs reserved per ingress replica")
    max_ongoing_requests: int | None = Field(
        None,
        ge=1,
        description=(
            "requests one ingress replica handles at once; None = auto: what the models can hold "
            "(each model's max_ongoing_requests x its most replicas + max_queued_requests) plus "
            f"{INGRESS_HEADROOM} for requests being parsed or fetching media, so that a full "
            "model queue answers 429 (OpenAI's shape) before the ingress's own queue fills"
        ),
    )
    max_queued_requests: int = Field(
        1024,
        ge=1,
        description="requests waiting for an ingress replica before the proxy answers 429 "
        "(Serve's own body, with Retry-After)",
    )
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After on 429 / 503 answers")
    model_call_timeout_s: float = Field(
        30.0,
        gt=0,
        description="ingress -> model call timeout (504 beyond); keep below the proxy's request_timeout_s",
    )
    ready_timeout_s: float = Field(
        2.0, gt=0, description="how long /ready waits for each model to answer"
    )
    batch_stats_header: bool = Field(
        True,
        description="add x-qwen3-embed-batch-requests / -batch-inputs headers (observed batching)",
    )
    colocate: bool = Field(
        False,
        description="serve the HTTP routes from the model replicas themselves (one model only): "
        "one Ray hop and one process less per request, the lowest latency; the ingress then has "
        "the model's replicas, resources and autoscaling, and a request in flight on a replica "
        "that dies gets the proxy's bare 500 instead of 503 + Retry-After",
    )
    timing_header: bool = Field(
        False,
        description="add a Server-Timing header with each stage's duration (ingress, model call, "
        "prepare, queue, forward, render): for measuring the request path, off on public endpoints",
    )


class ServeAppConfig(ReadableConfig):
    """Everything `build_app` needs: the models and the policies of the endpoint."""

    what = "serve app config"

    models: tuple[ModelConfig, ...] = Field(
        ..., min_length=1, description="served models, routed by `model`"
    )
    limits: RequestLimits = Field(default_factory=RequestLimits)
    media: MediaPolicy = Field(default_factory=MediaPolicy)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    ingress: IngressConfig = Field(default_factory=IngressConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> ServeAppConfig:
        names = [model.name for model in self.models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"served model names must be unique; duplicated: {duplicates}")
        if self.ingress.colocate and len(self.models) != 1:
            raise ValueError(
                f"ingress.colocate serves one model from its own replicas; {len(self.models)} "
                "models are configured (leave colocate off to route between them)"
            )
        return self

    def model_by_name(self) -> dict[str, ModelConfig]:
        return {model.name: model for model in self.models}

    def models_capacity(self) -> int:
        """Requests one ingress replica can have in the models at once: each model's ongoing
        requests on all its replicas (at the autoscaling maximum) plus the queue the ingress's
        handle keeps for it (Serve's max_queued_requests is per caller)."""
        total = 0
        for model in self.models:
            replicas = model.autoscale[1] if model.autoscale is not None else model.num_replicas
            total += model.max_ongoing_requests * replicas + model.max_queued_requests
        return total

    def ingress_max_ongoing_requests(self) -> int:
        """`ingress.max_ongoing_requests`, or when None (auto) the models' capacity plus headroom."""
        if self.ingress.max_ongoing_requests is not None:
            return self.ingress.max_ongoing_requests
        return self.models_capacity() + INGRESS_HEADROOM

    @classmethod
    def from_args(cls, args: ServeAppConfig | dict[str, Any]) -> ServeAppConfig:
        return args if isinstance(args, cls) else cls.model_validate(args)


class ServerConfig(ReadableConfig):
    """How `qwen3-embed serve` runs the app: its HTTP proxy and the Ray it joins or starts (a
    Serve config YAML says these in its own `http_options`). Not part of the app: they hold
    beside `--app-config` too."""

    what = "serve command config"

    host: str = Field("127.0.0.1", description="address the HTTP proxy binds")
    port: int = Field(8000, description="HTTP port")
    route_prefix: str = Field("/", description="URL prefix of the app")
    request_timeout_s: float = Field(60.0, description="end-to-end HTTP timeout of the Serve proxy")
    http_proxy: HttpProxy = Field(
        "auto",
        description="what answers HTTP on --port: `auto` (default), HAProxy for the private Ray "
        "started here where Ray ships its binary (Linux), else Ray's proxy; `haproxy`, Ray "
        "2.60's HAProxy mode (experimental in Ray): HAProxy forwards straight to the ingress "
        "replicas' own HTTP servers, ~10 ms less per request than `ray`, Ray Serve's Python "
        "proxy actor. HAProxy only for the private Ray started here (a cluster sets "
        "RAY_SERVE_ENABLE_HA_PROXY=1 at `ray start`). Under HAProxy a request in flight on an "
        "ingress replica that dies gets a bare 500 or a closed connection (the openai client "
        "retries both)",
    )
    address: str | None = Field(
        None,
        description="Ray cluster to join (default: $RAY_ADDRESS if set, else start a private "
        "local Ray)",
    )
    num_cpus: int | None = Field(
        None, description="CPUs of the local Ray started here (default: all)"
    )
    num_gpus: int | None = Field(
        None, description="GPUs of the local Ray started here (default: all)"
    )
    app_name: str = Field("qwen3-embed", description="Serve app name")

    def model_call_timeout_s(self) -> float:
        """The ingress -> model timeout under the proxy's: 5 s less (504 before the proxy's
        own timeout), at least 1 s."""
        return max(1.0, self.request_timeout_s - 5.0)
