"""The application builder: `ServeAppConfig` -> one Serve application.

    ingress (FastAPI, OpenAI routes) --handle--> one model deployment per served model
                                                 (EmbeddingModel, or RerankModel for rerankers)

Usable three ways with the same knobs:
- `qwen3-embed serve --model ...` (deployments/cli.py builds the config from flags);
- a Serve config YAML: `import_path: deployments.app:build_app` with the config as `args`
  (see deployments/serve_config.yaml), for `serve run` / `serve deploy`;
- Python: `serve.run(build_app({...}))`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ray.serve import Application

from .config import ModelConfig, ServeAppConfig
from .ingress import EmbeddingsIngress
from .model_deployment import EmbeddingModel

logger = logging.getLogger(__name__)


def build_app(args: dict[str, Any]) -> Application:
    """The Serve application builder (`import_path: deployments.app:build_app`): `args` is the
    YAML's `args` mapping, validated into a `ServeAppConfig`."""
    return build_application(ServeAppConfig.from_args(args))


def build_application(config: ServeAppConfig, cluster_gpus: float | None = None) -> Application:
    """`cluster_gpus`: GPUs in the cluster, for `gpus_per_replica: null` (asked from Ray when None)."""
    if cluster_gpus is None and any(model.gpus_per_replica is None for model in config.models):
        cluster_gpus = _cluster_gpus()
    names = deployment_names(config.models)
    if config.ingress.colocate:
        # One deployment: the ingress holds the model, with the model deployment's name,
        # replicas, resources, queue and batching (user_config).
        (model,) = config.models
        options = model_deployment_options(model, names[model.name], cluster_gpus or 0)
        return EmbeddingsIngress.options(**options).bind(config, None)
    models = {
        model.name: model_deployment(model)
        .options(**model_deployment_options(model, names[model.name], cluster_gpus or 0))
        .bind(model, config.limits, config.media)
        for model in config.models
    }
    return EmbeddingsIngress.options(**ingress_options(config)).bind(config, models)


def model_deployment(model: ModelConfig) -> Any:
    """The deployment class serving `model`: an embedding model or a reranker."""
    if model.task == "rerank":
        from .rerank_deployment import RerankModel

        return RerankModel
    return EmbeddingModel


def deployment_names(models: tuple[ModelConfig, ...]) -> dict[str, str]:
    """Served name -> a deployment name Serve accepts (no '#'), unique within the app."""
    names: dict[str, str] = {}
    for model in models:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", model.name).strip("-") or "model"
        kind = "RerankModel" if model.task == "rerank" else "EmbeddingModel"
        candidate = base = f"{kind}-{slug}"
        # Suffix until unique: a suffixed name can itself be another model's plain name
        # ("a-2" served beside "a" and "a/").
        suffix = 1
        while candidate in names.values():
            suffix += 1
            candidate = f"{base}-{suffix}"
        names[model.name] = candidate
    return names


def model_deployment_options(model: ModelConfig, name: str, cluster_gpus: float) -> dict[str, Any]:
    gpus = model.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if cluster_gpus > 0 else 0.0
        if not gpus:
            # "auto" sees the cluster as it is now: one that autoscales GPU nodes from zero looks
            # GPU-less, and the replicas would silently run on CPUs.
            logger.warning(
                "gpus_per_replica is auto and the cluster has no GPU now: %s runs on CPU. On a cluster "
                "that autoscales GPU nodes from 0, set gpus_per_replica explicitly.",
                name,
            )
    options: dict[str, Any] = {
        "name": name,
        "ray_actor_options": {"num_cpus": model.cpus_per_replica, "num_gpus": gpus},
        "max_ongoing_requests": model.max_ongoing_requests,
        "max_queued_requests": model.max_queued_requests,
        # Callers (the ingress) get BackPressureError carrying 429 + Retry-After when the queue is full.
        "backpressure_config": {"status_code": 429, "retry_after_s": model.retry_after_s},
        # Batch size and wait: applied by EmbeddingModel.reconfigure, changeable without a reload.
        "user_config": model.batching.model_dump(),
    }
    if model.autoscale is not None:
        low, high = model.autoscale
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            # A replica holding a full batch's worth of requests is busy enough.
            "target_ongoing_requests": model.batching.max_batch_size,
            "upscale_delay_s": model.upscale_delay_s,
            "downscale_delay_s": model.downscale_delay_s,
        }
    else:
        options["num_replicas"] = model.num_replicas
    return options


def ingress_options(config: ServeAppConfig) -> dict[str, Any]:
    ingress = config.ingress
    max_ongoing = config.ingress_max_ongoing_requests()
    if max_ongoing < config.models_capacity():
        logger.warning(
            "ingress.max_ongoing_requests=%d is below what the models can hold (%d): under load "
            "the ingress's queue fills first and the proxy answers 429 with Serve's own body "
            "instead of the models' 429 in OpenAI's shape; leave it unset (auto) to avoid this",
            max_ongoing,
            config.models_capacity(),
        )
    return {
        "name": "EmbeddingsIngress",
        "num_replicas": ingress.num_replicas,
        "ray_actor_options": {"num_cpus": ingress.cpus_per_replica},
        "max_ongoing_requests": max_ongoing,
        "max_queued_requests": ingress.max_queued_requests,
        # When the ingress itself is saturated the proxy answers 429 + Retry-After (Serve's body);
        # sized as above, the models' queues (429 in OpenAI's shape) overflow first.
        "backpressure_config": {"status_code": 429, "retry_after_s": ingress.retry_after_s},
    }


def _cluster_gpus() -> float:
    import ray

    if not ray.is_initialized():
        logger.warning(
            "gpus_per_replica is auto but Ray is not initialised; assuming no GPUs (0 per replica)"
        )
        return 0.0
    return float(ray.cluster_resources().get("GPU", 0.0))
