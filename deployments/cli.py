"""`qwen3-embed serve`: run the Serve application in the foreground until Ctrl-C.

Registered with `qwen3-embed` as the entry point `serve` of the group `qwen3_embed.commands`
(pyproject.toml), so the core CLI imports it only when `serve` is on the command line. Ray is
imported inside `run`, never at module top, so `qwen3-embed --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from qwen3_embed.options import LoadOptions, ReplicaOptions, add_flags, help_with_default, rules

from .config import (
    AuthConfig,
    BatchingConfig,
    IngressConfig,
    MediaPolicy,
    ModelConfig,
    ServeAppConfig,
)
from .ray_env import HTTP_PROXIES, apply_environment, serve_environment

logger = logging.getLogger("qwen3_embed.serve")

DEFAULT_APP_NAME = "qwen3-embed"
DEFAULT_REQUEST_TIMEOUT_S = 60.0


def _autoscale(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--autoscale wants MIN:MAX (e.g. 1:4), got {text!r}"
        ) from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    defaults_batching = BatchingConfig()
    parser = subparsers.add_parser(
        "serve",
        help="serve models over an OpenAI-compatible /v1/embeddings API and rerankers at /v1/rerank and /score (Ray Serve, foreground)",
        description=(
            "Start Ray Serve with an OpenAI-compatible embeddings API and block until Ctrl-C. "
            "API keys are read from an environment variable or a file, never from the command line."
        ),
    )
    source = parser.add_argument_group("models")
    source.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="M",
        help="hub id, local directory or fsspec URL; repeat to serve several models (routed by `model`)",
    )
    source.add_argument(
        "--served-model-name",
        action="append",
        default=[],
        metavar="NAME",
        help="name clients send as `model`, one per --model in the same order (default: the --model value)",
    )
    source.add_argument(
        "--calibration",
        action="append",
        default=[],
        metavar="FILE",
        help="int8/uint8 ranges for embed_dtype int8/uint8: a batch job's _manifest.json (or "
        "JSON [[min per dim...], [max per dim...]]), one per --model in the same order",
    )
    source.add_argument(
        "--reranker-model",
        action="append",
        default=[],
        metavar="M",
        help="a Qwen3-Reranker or Qwen3-VL-Reranker (hub id, local directory or fsspec URL) served "
        "beside the --model(s) at /v1/rerank, /v2/rerank and /score, with its own replicas; "
        "repeatable. The loading, replica and batching flags apply to every model; "
        "--app-config sets them per model",
    )
    source.add_argument(
        "--reranker-served-model-name",
        action="append",
        default=[],
        metavar="NAME",
        help="name clients send as `model`, one per --reranker-model in the same order "
        "(default: the --reranker-model value)",
    )
    source.add_argument(
        "--app-config",
        metavar="PATH",
        help="YAML/JSON file with the full ServeAppConfig (the builder args); replaces the model and policy flags (refused beside it)",
    )
    # How each replica loads its model: the core's knobs, flags and help (`qwen3_embed.options`).
    add_flags(source, LoadOptions, skip=("model",))

    http = parser.add_argument_group("HTTP")
    http.add_argument(
        "--host", default="127.0.0.1", help="address the HTTP proxy binds (default: 127.0.0.1)"
    )
    http.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    http.add_argument("--route-prefix", default="/", help="URL prefix of the app (default: /)")
    http.add_argument(
        "--request-timeout-s",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        help=f"end-to-end HTTP timeout of the Serve proxy (default: {DEFAULT_REQUEST_TIMEOUT_S:g})",
    )
    layout = http.add_mutually_exclusive_group()
    layout.add_argument(
        "--split-ingress",
        action="store_true",
        help="run the HTTP routes in an ingress deployment of their own, which calls the model "
        "replicas through a Ray handle: ingress and models scale apart (e.g. one ingress in "
        "front of many GPU replicas), and a request in flight on a model replica that dies gets "
        "503 + Retry-After; one Ray hop (~5 ms on CPU) more per request. Default with one "
        "--model: colocated (the model replicas serve the routes themselves, the fastest "
        "layout); with several --model: split",
    )
    layout.add_argument(
        "--colocate-ingress",
        action="store_true",
        help="the default with one --model (kept for scripts that name it): the model replicas "
        "serve the HTTP routes themselves; refused with several --model",
    )
    http.add_argument(
        "--http-proxy",
        choices=HTTP_PROXIES,
        default="ray",
        help="what answers HTTP on --port: `ray`, Ray Serve's Python proxy actor; `haproxy`, Ray "
        "2.60's HAProxy mode (experimental in Ray): HAProxy forwards straight to the ingress "
        "replicas' own HTTP servers, a few ms less per request. Only for the private Ray started "
        "here (a cluster sets RAY_SERVE_ENABLE_HA_PROXY=1 at `ray start`). In that mode a request "
        "in flight on an ingress replica that dies gets a bare 500 or a closed connection, and "
        "Ctrl-C takes ~35 s (Ray drains the replicas) (default: ray)",
    )
    http.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding the accepted API key(s), comma-separated (default: no keys, open API)",
    )
    http.add_argument(
        "--api-key-file", metavar="PATH", help="file with one accepted API key per line"
    )
    http.add_argument(
        "--allow-url-fetch",
        action="store_true",
        help="let VL inputs name http(s) media URLs (fetched with SSRF checks); needs --url-allowed-host",
    )
    http.add_argument(
        "--url-allowed-host",
        action="append",
        default=[],
        metavar="HOST",
        help="host media URLs may name ('name', '*.domain' or '*'); repeatable",
    )

    scale = parser.add_argument_group("replicas and batching")
    replicas = scale.add_mutually_exclusive_group()
    add_flags(replicas, ReplicaOptions, only=("num_replicas",))
    replicas.add_argument(
        "--autoscale", type=_autoscale, metavar="MIN:MAX", help="autoscale replicas per model"
    )
    upscale_delay = ModelConfig.model_fields["upscale_delay_s"].default
    downscale_delay = ModelConfig.model_fields["downscale_delay_s"].default
    scale.add_argument(
        "--upscale-delay-s",
        type=float,
        default=upscale_delay,
        metavar="S",
        help="with --autoscale: seconds of high load before replicas are added "
        f"(default: {upscale_delay:g}, Serve's)",
    )
    scale.add_argument(
        "--downscale-delay-s",
        type=float,
        default=downscale_delay,
        metavar="S",
        help="with --autoscale: seconds of low load before replicas are removed "
        f"(default: {downscale_delay:g}, Serve's)",
    )
    add_flags(scale, ReplicaOptions, skip=("num_replicas",))
    scale.add_argument(
        "--max-batch-size",
        type=int,
        default=defaults_batching.max_batch_size,
        metavar="B",
        help=f"requests per dynamic batch (default: {defaults_batching.max_batch_size})",
    )
    scale.add_argument(
        "--batch-wait-ms",
        type=float,
        default=defaults_batching.batch_wait_ms,
        metavar="W",
        help=f"longest an under-full batch waits for company, in ms; 0 = start at once when idle (default: {defaults_batching.batch_wait_ms:g})",
    )
    for name in ("max_ongoing_requests", "max_queued_requests"):
        field = ModelConfig.model_fields[name]
        scale.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=field.default,
            metavar="N",
            help=help_with_default(field.description or "", field.default),
        )

    ray_group = parser.add_argument_group("Ray")
    ray_group.add_argument(
        "--address",
        help="Ray cluster to join (default: $RAY_ADDRESS if set, else start a private local Ray)",
    )
    ray_group.add_argument(
        "--num-cpus", type=int, help="CPUs of the local Ray started here (default: all)"
    )
    ray_group.add_argument(
        "--num-gpus", type=int, help="GPUs of the local Ray started here (default: all)"
    )
    ray_group.add_argument(
        "--app-name", default=DEFAULT_APP_NAME, help=f"Serve app name (default: {DEFAULT_APP_NAME})"
    )
    parser.set_defaults(handler=run)
    return parser


# Flags about the server itself, which hold with --app-config too; every other flag describes the
# app, which the file then describes instead.
SERVER_FLAGS = frozenset(
    {
        "app_config", "host", "port", "route_prefix", "request_timeout_s", "http_proxy",
        "address", "num_cpus", "num_gpus", "app_name", "handler",
    }
)  # fmt: skip


def _app_flags_given(args: argparse.Namespace) -> list[str]:
    """The app flags set to something other than their defaults (as --flag names)."""
    root = argparse.ArgumentParser()
    add_parser(root.add_subparsers())
    defaults = vars(root.parse_args(["serve"]))
    return [
        f"--{name.replace('_', '-')}"
        for name, default in defaults.items()
        if name not in SERVER_FLAGS and getattr(args, name, default) != default
    ]


def config_from_args(args: argparse.Namespace) -> ServeAppConfig:
    """The flags (or --app-config) as one validated ServeAppConfig; ValueError when inconsistent."""
    if args.app_config:
        if args.model or args.reranker_model:
            raise ValueError(
                "--app-config and --model / --reranker-model are exclusive: put the models in the file"
            )
        ignored = _app_flags_given(args)
        if ignored:
            raise ValueError(
                f"--app-config replaces the model and policy flags; {', '.join(ignored)} would be "
                "ignored: put them in the file"
            )
        text = Path(args.app_config).read_text(encoding="utf-8")
        return ServeAppConfig.model_validate(yaml.safe_load(text))
    if not args.model and not args.reranker_model:
        raise ValueError("give at least one --model or --reranker-model (or --app-config)")
    for flag, names, models in (
        ("--served-model-name", args.served_model_name, args.model),
        ("--reranker-served-model-name", args.reranker_served_model_name, args.reranker_model),
    ):
        if names and len(names) != len(models):
            model_flag = "--reranker-model" if flag.startswith("--reranker") else "--model"
            raise ValueError(
                f"{flag} was given {len(names)} time(s) for {len(models)} {model_flag}; give one per model"
            )
    if args.calibration and len(args.calibration) != len(args.model):
        raise ValueError(
            f"--calibration was given {len(args.calibration)} time(s) for {len(args.model)} --model; give one per model"
        )
    ranges = [_calibration_ranges(path) for path in args.calibration] or [None] * len(args.model)
    # (model, served name, task, calibration ranges): the embedding models, then the rerankers.
    served = [
        (model, args.served_model_name[i] if args.served_model_name else None, "embed", ranges[i])
        for i, model in enumerate(args.model)
    ] + [
        (
            model,
            args.reranker_served_model_name[i] if args.reranker_served_model_name else None,
            "rerank",
            None,
        )
        for i, model in enumerate(args.reranker_model)
    ]
    # Knobs left unset take ModelConfig's defaults (the core's).
    knobs = {
        name: getattr(args, name)
        for name in (*rules(LoadOptions), *rules(ReplicaOptions))
        if name != "model" and getattr(args, name) is not None
    }
    models = tuple(
        ModelConfig(
            model=model,
            served_model_name=name,
            task=task,
            **knobs,
            autoscale=args.autoscale,
            upscale_delay_s=args.upscale_delay_s,
            downscale_delay_s=args.downscale_delay_s,
            batching=BatchingConfig(
                max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms
            ),
            max_ongoing_requests=args.max_ongoing_requests,
            max_queued_requests=args.max_queued_requests,
            calibration_ranges=model_ranges,
        )
        for model, name, task, model_ranges in served
    )
    return ServeAppConfig(
        models=models,
        auth=AuthConfig(api_key_env=args.api_key_env, api_key_file=args.api_key_file),
        media=MediaPolicy(
            allow_url_fetch=args.allow_url_fetch, url_allowed_hosts=tuple(args.url_allowed_host)
        ),
        ingress=IngressConfig(
            model_call_timeout_s=max(1.0, args.request_timeout_s - 5.0),
            colocate=colocate_ingress(args),
        ),
    )


def _calibration_ranges(path: str) -> list[list[float]]:
    """The ranges of a `--calibration` file (read here, on the driver: they travel inside the
    config, so no replica needs the file)."""
    import json

    from qwen3_embed.precision import ranges_from_file

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return ranges_from_file(data).tolist()
    except (OSError, ValueError) as error:
        raise ValueError(f"--calibration {path}: {error}") from None


def colocate_ingress(args: argparse.Namespace) -> bool:
    """The layout: colocated unless --split-ingress, or several models, rerankers included (which
    one ingress routes between); --colocate-ingress with several models stays colocated and is refused by the
    config, naming the rule."""
    if args.split_ingress:
        return False
    return args.colocate_ingress or len(args.model) + len(args.reranker_model) == 1


def _check_keys_here(config: ServeAppConfig) -> None:
    """Fail before starting anything when the key source is missing here (a local Ray's replicas
    inherit this environment). The keys are read, not printed."""
    if config.auth.enabled:
        from .security import read_api_keys

        read_api_keys(config.auth)


class _DropReconnectNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Connecting to existing Serve app")


@contextlib.contextmanager
def _serve_run_reconnect_notice_dropped() -> Iterator[None]:
    """`serve.run` reconnects to the Serve instance that `serve.start` has just started with our
    HTTP options, and logs "Connecting to existing Serve app ... New http_options will not be
    applied": it passes none, ours are applied. Only that call's notice goes; the one from
    `serve.start` (Serve already running on a shared cluster, with its own options) stays."""
    serve_logger = logging.getLogger("ray.serve")
    notice = _DropReconnectNotice()
    serve_logger.addFilter(notice)
    try:
        yield
    finally:
        serve_logger.removeFilter(notice)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    address = args.address or os.environ.get("RAY_ADDRESS")
    try:
        config = config_from_args(args)
        _check_keys_here(config)
        if address and args.http_proxy == "haproxy":
            raise ValueError(
                "--http-proxy haproxy applies to the private Ray started here; a cluster "
                "(--address or $RAY_ADDRESS) enables it with RAY_SERVE_ENABLE_HA_PROXY=1 in "
                "the environment of `ray start` on every node"
            )
        # Before `from ray import serve` below, which reads Serve's settings from the environment.
        private_ray_env = (
            {} if address else apply_environment(serve_environment(args.http_proxy, args.host))
        )
    except (ValueError, OSError) as error:  # pydantic's ValidationError is a ValueError
        print(f"qwen3-embed serve: {error}", file=sys.stderr)
        return 2

    import ray
    from ray import serve

    from .app import build_application

    serving = threading.Event()
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        if stop.is_set():
            return  # already stopping: a second Ctrl-C must not break the shutdown itself
        stop.set()
        if not serving.is_set():
            raise KeyboardInterrupt  # still starting: interrupt whatever Ray call is waiting

    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        logger.info(
            "private Ray with %s", ", ".join(f"{k}={v}" for k, v in private_ray_env.items())
        )
        # "local": a private Ray for this process, never someone else's cluster on the machine.
        ray.init(
            address="local",
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            logging_level=logging.WARNING,
        )
    try:
        # Installed after ray.init, which sets its own SIGTERM handler in drivers.
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        serve.start(
            http_options={
                "host": args.host,
                "port": args.port,
                "request_timeout_s": args.request_timeout_s,
            }
        )
        with _serve_run_reconnect_notice_dropped():
            serve.run(build_application(config), name=args.app_name, route_prefix=args.route_prefix)
        base = f"http://{args.host}:{args.port}{args.route_prefix.rstrip('/')}"
        names = ", ".join(model.name for model in config.models)
        serving.set()
        routes = ", ".join(
            f"{base}{route}"
            for task, route in (("embed", "/v1/embeddings"), ("rerank", "/v1/rerank"))
            if any(model.task == task for model in config.models)
        )
        print(f"qwen3-embed: serving {names} at {routes} (Ctrl-C to stop)", flush=True)
        while not stop.wait(0.5):
            pass
        print("qwen3-embed: shutting down", flush=True)
        return 0
    except KeyboardInterrupt:
        print("qwen3-embed: interrupted during start-up, shutting down", flush=True)
        return 130
    finally:
        started = time.monotonic()
        try:
            # Only our app goes (its replicas drain). A shared cluster keeps its Serve; a private
            # one goes with ray.shutdown(). Not serve.shutdown(): its controller kills itself
            # inside its own graceful_shutdown call, and the raylet then logs that call as
            # failed ("Task ServeController.graceful_shutdown failed ...") on every clean exit.
            serve.delete(args.app_name)
        finally:
            ray.shutdown()
        logger.info("stopped in %.1fs", time.monotonic() - started)
