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
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from qwen3_embed.options import LoadOptions, ReplicaOptions, add_flags, rules
from qwen3_embed_layers.config_base import ReadableConfig

from .config import (
    AuthConfig,
    BatchingConfig,
    MediaPolicy,
    ModelConfig,
    ServeAppConfig,
    ServerConfig,
)
from .ray_env import apply_environment, resolve_http_proxy, serve_environment

logger = logging.getLogger("qwen3_embed.serve")


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


@dataclass(frozen=True)
class FieldFlag:
    """A flag of `qwen3-embed serve` that sets one config field, generated from it (as the batch
    job's flags are): its type, choices and default are the field's, its help the field's
    description unless the command line words it otherwise (`help`), then the field's default.
    Not given, it is None and the config's own default applies."""

    config: type[ReadableConfig]
    field: str
    flag: str | None = None  # default: --field-name
    metavar: str | None = None
    help: str | None = None
    default_note: str = ""  # said after the default: where it comes from
    type: Callable[[str], Any] | None = None  # for values the annotation cannot parse

    @property
    def default(self) -> Any:
        return self.config.model_fields[self.field].get_default(call_default_factory=True)

    def add_to(self, group: Any) -> None:
        info = self.config.model_fields[self.field]
        kinds = {kind for kind in _kinds(info.annotation) if kind is not type(None)}
        kwargs: dict[str, Any] = {"dest": self.field, "default": None}
        shown = self.default
        if kinds == {bool}:
            kwargs["action"] = "store_true"  # off unless given
            shown = None
        elif get_origin(info.annotation) is tuple and self.type is None:
            kwargs["action"] = "append"  # repeatable: one value per use
            shown = None
        elif self.type is not None:
            kwargs["type"] = self.type
        elif kinds <= {int, float} and kinds:
            kwargs["type"] = float if float in kinds else int
        choices = [get_args(kind) for kind in _literals(info.annotation)]
        if choices:
            kwargs["choices"] = choices[0]
        if self.metavar is not None:
            kwargs["metavar"] = self.metavar
        text = self.help if self.help is not None else info.description or ""
        if shown is not None:
            value = f"{shown:g}" if isinstance(shown, float) else shown
            text = f"{text} (default: {value}{self.default_note})"
        group.add_argument(self.flag or f"--{self.field.replace('_', '-')}", help=text, **kwargs)

    def given(self, args: argparse.Namespace) -> Any:
        """The value given on the command line, as the field takes it; None when not given."""
        value = getattr(args, self.field, None)
        return tuple(value) if isinstance(value, list) else value


def _kinds(annotation: Any) -> set[Any]:
    args = get_args(annotation)
    if not args or get_origin(annotation) is Literal:
        return {annotation}
    return set().union(*(_kinds(arg) for arg in args if arg is not Ellipsis))


def _literals(annotation: Any) -> list[Any]:
    return [kind for kind in _kinds(annotation) if get_origin(kind) is Literal]


def _flags(config: type[ReadableConfig], *fields: Any) -> tuple[FieldFlag, ...]:
    """FieldFlags of `config`: a field name, or (name, {FieldFlag's other arguments})."""
    return tuple(
        FieldFlag(config, field)
        if isinstance(field, str)
        else FieldFlag(config, field[0], **field[1])
        for field in fields
    )


# Every flag that sets a config field, by argument group, in --help's order. The server's own
# settings (ServerConfig) hold beside --app-config; every other flag describes the app.
SERVER_HTTP = _flags(ServerConfig, "host", "port", "route_prefix", "request_timeout_s")
SERVER_PROXY = _flags(ServerConfig, "http_proxy")
SERVER_RAY = _flags(ServerConfig, "address", "num_cpus", "num_gpus", "app_name")
AUTH = _flags(
    AuthConfig,
    (
        "api_key_env",
        {
            "metavar": "VAR",
            "help": "environment variable holding the accepted API key(s), comma-separated "
            "(default: no keys, open API)",
        },
    ),
    ("api_key_file", {"metavar": "PATH", "help": "file with one accepted API key per line"}),
)
MEDIA = _flags(
    MediaPolicy,
    (
        "allow_url_fetch",
        {
            "help": "let VL inputs name http(s) media URLs (fetched with SSRF checks); needs "
            "--url-allowed-host"
        },
    ),
    (
        "url_allowed_hosts",
        {
            "flag": "--url-allowed-host",
            "metavar": "HOST",
            "help": "host media URLs may name ('name', '*.domain' or '*'); repeatable",
        },
    ),
)
AUTOSCALE = FieldFlag(
    ModelConfig,
    "autoscale",
    metavar="MIN:MAX",
    help="autoscale replicas per model",
    type=_autoscale,
)
DELAYS = _flags(
    ModelConfig,
    (
        "upscale_delay_s",
        {
            "metavar": "S",
            "help": "with --autoscale: seconds of high load before replicas are added",
            "default_note": ", Serve's",
        },
    ),
    (
        "downscale_delay_s",
        {
            "metavar": "S",
            "help": "with --autoscale: seconds of low load before replicas are removed",
            "default_note": ", Serve's",
        },
    ),
)
BATCHING = _flags(
    BatchingConfig,
    ("max_batch_size", {"metavar": "B", "help": "requests per dynamic batch"}),
    (
        "batch_wait_ms",
        {
            "metavar": "W",
            "help": "longest an under-full batch waits for company, in ms; 0 = start at once "
            "when idle",
        },
    ),
)
QUEUES = _flags(
    ModelConfig,
    ("max_ongoing_requests", {"metavar": "N"}),
    ("max_queued_requests", {"metavar": "N"}),
)
FIELD_FLAGS = (
    *SERVER_HTTP, *SERVER_PROXY, *AUTH, *MEDIA, AUTOSCALE, *DELAYS, *BATCHING, *QUEUES, *SERVER_RAY
)  # fmt: skip


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the `serve` command to `qwen3-embed`."""
    parser = subparsers.add_parser(
        "serve",
        help="serve models over an OpenAI-compatible /v1/embeddings API and rerankers at /v1/rerank and /score (Ray Serve, foreground)",
        description=(
            "Start Ray Serve with an OpenAI-compatible embeddings API and block until Ctrl-C. "
            "API keys are read from an environment variable or a file, never from the command line."
        ),
    )
    # The served models: lists, one value per model (the config holds one ModelConfig each).
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
    for flag in SERVER_HTTP:
        flag.add_to(http)
    layout = http.add_mutually_exclusive_group()  # IngressConfig.colocate, from the model count
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
    for flag in (*SERVER_PROXY, *AUTH, *MEDIA):
        flag.add_to(http)

    scale = parser.add_argument_group("replicas and batching")
    replicas = scale.add_mutually_exclusive_group()
    add_flags(replicas, ReplicaOptions, only=("num_replicas",))
    AUTOSCALE.add_to(replicas)
    for flag in DELAYS:
        flag.add_to(scale)
    add_flags(scale, ReplicaOptions, skip=("num_replicas",))
    for flag in (*BATCHING, *QUEUES):
        flag.add_to(scale)

    ray_group = parser.add_argument_group("Ray")
    for flag in SERVER_RAY:
        flag.add_to(ray_group)
    parser.set_defaults(handler=run)
    return parser


def _given(args: argparse.Namespace, config: type[ReadableConfig]) -> dict[str, Any]:
    """The fields of `config` whose flags were given (the others keep the config's defaults)."""
    values = {flag.field: flag.given(args) for flag in FIELD_FLAGS if flag.config is config}
    return {name: value for name, value in values.items() if value is not None}


def server_config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The server's own flags (they hold beside --app-config too)."""
    return ServerConfig.model_validate(_given(args, ServerConfig))


def _app_flags_given(args: argparse.Namespace) -> list[str]:
    """The flags given that describe the app (every flag but the server's own), as --flag names."""
    root = argparse.ArgumentParser()
    parser = add_parser(root.add_subparsers())
    server = {*ServerConfig.model_fields, "app_config", "help"}
    named: dict[str, str] = {}
    for action in parser._actions:  # the first (visible) spelling of each destination
        if action.dest not in server and action.option_strings:
            named.setdefault(action.dest, action.option_strings[0])
    return [
        flag for dest, flag in named.items() if getattr(args, dest, None) not in (None, [], False)
    ]


def config_from_args(args: argparse.Namespace) -> ServeAppConfig:
    """The flags (or --app-config) as one validated ServeAppConfig. A refused value raises
    `InvalidConfigError` in the words a YAML app config with the same values gets; ValueError
    when the flags contradict each other."""
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
    # What every model gets: the knobs and model fields given (the others: ModelConfig's
    # defaults, the core's), and the batching given.
    shared = {
        name: getattr(args, name)
        for name in (*rules(LoadOptions), *rules(ReplicaOptions))
        if name != "model" and getattr(args, name) is not None
    }
    shared.update(_given(args, ModelConfig))
    batching = _given(args, BatchingConfig)
    if batching:
        shared["batching"] = batching
    models = [
        {
            "model": model,
            **({"served_model_name": name} if name is not None else {}),
            "task": task,
            **shared,
            **({"calibration_ranges": model_ranges} if model_ranges is not None else {}),
        }
        for model, name, task, model_ranges in served
    ]
    server = server_config_from_args(args)
    # One mapping validated at once, as a YAML app config is: a refused value reads the same.
    return ServeAppConfig.model_validate(
        {
            "models": models,
            "auth": _given(args, AuthConfig),
            "media": _given(args, MediaPolicy),
            "ingress": {
                "model_call_timeout_s": server.model_call_timeout_s(),
                "colocate": colocate_ingress(args),
            },
        }
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
    # HAProxy's launcher script (`haproxy_launch`) lives as long as the command: Ray runs it again
    # on each HAProxy reload.
    with tempfile.TemporaryDirectory(prefix="qwen3-embed-serve-") as launcher_dir:
        return _run(args, Path(launcher_dir))


def _run(args: argparse.Namespace, launcher_dir: Path) -> int:
    try:
        server = server_config_from_args(args)
        address = server.address or os.environ.get("RAY_ADDRESS")
        config = config_from_args(args)
        _check_keys_here(config)
        if address and server.http_proxy == "haproxy":
            raise ValueError(
                "--http-proxy haproxy applies to the private Ray started here; a cluster "
                "(--address or $RAY_ADDRESS) enables it with RAY_SERVE_ENABLE_HA_PROXY=1 in "
                "the environment of `ray start` on every node"
            )
        http_proxy = resolve_http_proxy(server.http_proxy, private=not address)
        # Before `from ray import serve` below, which reads Serve's settings from the environment.
        private_ray_env = (
            {}
            if address
            else apply_environment(
                serve_environment(http_proxy, server.host, launcher_dir=launcher_dir)
            )
        )
    except (ValueError, OSError) as error:  # InvalidConfigError is a ValueError
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
            num_cpus=server.num_cpus,
            num_gpus=server.num_gpus,
            logging_level=logging.WARNING,
        )
    try:
        # Installed after ray.init, which sets its own SIGTERM handler in drivers.
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        serve.start(
            http_options={
                "host": server.host,
                "port": server.port,
                "request_timeout_s": server.request_timeout_s,
            }
        )
        with _serve_run_reconnect_notice_dropped():
            serve.run(
                build_application(config), name=server.app_name, route_prefix=server.route_prefix
            )
        base = f"http://{server.host}:{server.port}{server.route_prefix.rstrip('/')}"
        names = ", ".join(model.name for model in config.models)
        serving.set()
        routes = ", ".join(
            f"{base}{route}"
            for task, route in (("embed", "/v1/embeddings"), ("rerank", "/v1/rerank"))
            if any(model.task == task for model in config.models)
        )
        proxy = http_proxy if not address else "the cluster's"
        print(
            f"qwen3-embed: serving {names} at {routes} ({proxy} proxy; Ctrl-C to stop)",
            flush=True,
        )
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
            serve.delete(server.app_name)
        finally:
            ray.shutdown()
        logger.info("stopped in %.1fs", time.monotonic() - started)
