"""The application builder (deployments/app.py): deployment and ingress options, deployment
names, and the YAML example (deployments/serve_config.yaml) under Serve's own schema.
No cluster: binding an application needs none."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployments.config import ModelConfig, ServeAppConfig
from qwen3_embed_layers.config_base import InvalidConfigError

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------- app builder / options
def test_deployment_options():
    from deployments.app import (
        build_application,
        deployment_names,
        ingress_options,
        model_deployment_options,
    )

    model = ModelConfig(
        model="m", batching={"max_batch_size": 8, "batch_wait_ms": 3}, max_queued_requests=5
    )
    options = model_deployment_options(model, "EmbeddingModel-m", cluster_gpus=2)
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert options["user_config"] == {"max_batch_size": 8, "batch_wait_ms": 3.0}
    assert options["num_replicas"] == 1 and options["max_queued_requests"] == 5
    assert options["backpressure_config"]["status_code"] == 429
    assert (
        model_deployment_options(model, "x", cluster_gpus=0)["ray_actor_options"]["num_gpus"] == 0
    )
    scaled = model_deployment_options(
        ModelConfig(model="m", autoscale=(1, 4), gpus_per_replica=0.5), "x", cluster_gpus=0
    )
    assert (
        scaled["autoscaling_config"]["min_replicas"] == 1
        and scaled["autoscaling_config"]["max_replicas"] == 4
    )
    # Serve's own delays unless set, and Serve's schema accepts what is passed.
    from ray.serve.config import AutoscalingConfig

    assert AutoscalingConfig(**scaled["autoscaling_config"]).downscale_delay_s == 600
    assert scaled["autoscaling_config"]["upscale_delay_s"] == 30
    quick = model_deployment_options(
        ModelConfig(model="m", autoscale=(1, 3), upscale_delay_s=1, downscale_delay_s=2.5), "x", 0
    )["autoscaling_config"]
    assert (quick["upscale_delay_s"], quick["downscale_delay_s"]) == (1, 2.5)
    with pytest.raises(InvalidConfigError, match="downscale_delay_s"):
        ModelConfig(model="m", downscale_delay_s=-1)
    assert "num_replicas" not in scaled and scaled["ray_actor_options"]["num_gpus"] == 0.5
    models = (ModelConfig(model="Qwen/A"), ModelConfig(model="x", served_model_name="Qwen A"))
    names = deployment_names(models)
    assert len(set(names.values())) == 2 and all("#" not in name for name in names.values())
    config = ServeAppConfig(models=models)
    assert ingress_options(config)["backpressure_config"]["status_code"] == 429
    app = build_application(config, cluster_gpus=0)  # binding needs no cluster
    assert type(app).__name__ == "Application"


def test_deployment_names_stay_unique_when_a_suffix_is_another_models_name():
    from deployments.app import deployment_names

    # "a" and "a/" share a slug; the old suffix (the model's index) made "a/" EmbeddingModel-a-2,
    # which is already "a-2"'s own name.
    models = tuple(ModelConfig(model="m", served_model_name=name) for name in ("a-2", "a", "a/"))
    names = deployment_names(models)
    assert len(set(names.values())) == 3, names


def test_serve_config_yaml_is_valid():
    from ray.serve.schema import ServeDeploySchema

    document = yaml.safe_load((REPO / "deployments" / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(document)  # Serve's own schema for serve run/deploy
    app = schema.applications[0]
    assert app.import_path == "deployments.app:build_app"
    config = ServeAppConfig.model_validate(app.args)
    assert config.models and config.auth.api_key_env
    # What `serve run` / `serve deploy` do with import_path + args (binding needs no cluster).
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    built = call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), app.args)
    assert type(built).__name__ == "Application"


def test_ingress_is_sized_so_model_queues_overflow_first():
    from deployments.app import ingress_options
    from deployments.config import INGRESS_HEADROOM

    config = ServeAppConfig.model_validate(
        {
            "models": [
                {"model": "a", "max_ongoing_requests": 4, "max_queued_requests": 8},
                {"model": "b", "autoscale": (1, 3), "max_queued_requests": 100},
            ]
        }
    )
    capacity = (4 * 1 + 8) + (64 * 3 + 100)
    assert config.models_capacity() == capacity
    assert ingress_options(config)["max_ongoing_requests"] == capacity + INGRESS_HEADROOM
    explicit = config.model_copy(
        update={"ingress": config.ingress.model_copy(update={"max_ongoing_requests": 7})}
    )
    assert ingress_options(explicit)["max_ongoing_requests"] == 7  # honoured (with a warning)
