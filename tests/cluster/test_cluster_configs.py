"""cluster_configs/ against the real code.

Every YAML parses; the launcher configs pass Ray's own launcher validation; the KubeRay
manifests use only ray.io/v1 field names; every `qwen3-embed ...` command in them (entrypoints,
setup commands, the README's shell blocks; YAML comments do not count) parses with the real
argument parser and builds a valid job / app config; every Serve `import_path` imports and builds
an application from its `args`; GPU requests agree between Serve / the batch job, Ray resources
and Kubernetes limits; and one Serve config really serves on the local Ray (tiny checkpoint).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.config import ModelConfig, ServeAppConfig
from pipelines.config import JobConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "cluster_configs"
LAUNCHERS = ("aws.yaml", "gcp.yaml")
SERVE_FILES = ("serve/text.yaml", "serve/vl.yaml", "serve/text-and-vl.yaml")
RAYJOB = "kuberay/rayjob-embed.yaml"
RAYSERVICE = "kuberay/rayservice.yaml"
JOB_FILE = "jobs/embed-job.yaml"
EXPECTED = {*LAUNCHERS, *SERVE_FILES, RAYJOB, RAYSERVICE, JOB_FILE}
IMPORT_PATH = "deployments.app:build_app"


def _docs(name: str) -> list[Any]:
    return list(yaml.safe_load_all((CONFIGS / name).read_text(encoding="utf-8")))


def _doc(name: str) -> dict[str, Any]:
    docs = _docs(name)
    assert len(docs) == 1 and isinstance(docs[0], dict), name
    return docs[0]


def _all_yaml() -> list[str]:
    return sorted(str(path.relative_to(CONFIGS)) for path in CONFIGS.rglob("*.y*ml"))


# ------------------------------------------------------------------------------ parsing
def test_the_expected_files_exist():
    assert set(_all_yaml()) >= EXPECTED, sorted(EXPECTED - set(_all_yaml()))
    assert (CONFIGS / "README.md").is_file()


@pytest.mark.parametrize("name", _all_yaml())
def test_every_yaml_parses(name: str):
    docs = _docs(name)
    assert docs and all(isinstance(doc, dict) and doc for doc in docs), name


# ------------------------------------------------------------------- shell commands
_SEPARATORS = {";", "&&", "||", "|", "&", "(", ")"}


def _segments(text: str) -> list[list[str]]:
    """Shell command lines of `text` as word lists, split at ; && || | and newlines."""
    segments: list[list[str]] = []
    for line in text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in lexer:
            if token in _SEPARATORS:
                segments.append(current)
                current = []
            else:
                current.append(token)
        segments.append(current)
    return [segment for segment in segments if segment]


def qwen3_commands(text: str) -> list[tuple[list[str], Path]]:
    """Every `qwen3-embed ARGS` (or `python -m qwen3_embed ARGS`) in `text`, as (ARGS, the
    folder relative paths in it refer to): at the start of a command, after env assignments or
    `exec`, or after the `--` of `ray job submit [--working-dir D] -- ...`."""
    found = []
    for words in _segments(text):
        workdir = REPO
        if words[:3] == ["ray", "job", "submit"] and "--" in words:
            head = words[: words.index("--")]
            if "--working-dir" in head:
                workdir = REPO / head[head.index("--working-dir") + 1]
            words = words[words.index("--") + 1 :]
        while words and (words[0] == "exec" or re.fullmatch(r"[A-Za-z_]\w*=.*", words[0])):
            words = words[1:]
        if words[:1] == ["qwen3-embed"] and len(words) > 1:  # alone, it is a name (cluster_name)
            found.append((words[1:], workdir))
        elif words[:3] in (["python", "-m", "qwen3_embed"], ["python3", "-m", "qwen3_embed"]):
            found.append((words[3:], workdir))
    return found


def _strings(node: Any):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _readme_shell_blocks() -> list[str]:
    text = (CONFIGS / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S)


def _all_commands() -> list[tuple[str, list[str], Path]]:
    commands = []
    for name in _all_yaml():
        for doc in _docs(name):
            for text in _strings(doc):
                commands += [(name, argv, workdir) for argv, workdir in qwen3_commands(text)]
    for block in _readme_shell_blocks():
        commands += [("README.md", argv, workdir) for argv, workdir in qwen3_commands(block)]
    return commands


def test_command_finder_sees_what_it_should():
    assert qwen3_commands("ray stop; FOO=1 qwen3-embed models --json && echo ok") == [
        (["models", "--json"], REPO)
    ]
    assert qwen3_commands("ray job submit --working-dir x -- qwen3-embed embed a b") == [
        (["embed", "a", "b"], REPO / "x")
    ]
    assert qwen3_commands('pip install "qwen3-embed[vl,s3]"  # qwen3-embed models') == []


def _parse(argv: list[str]):
    from qwen3_embed.cli import build_parser

    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse reports the bad flag on stderr
        raise AssertionError(f"`qwen3-embed {shlex.join(argv)}` does not parse") from exit_
    # argparse accepts unambiguous abbreviations (--gpus for --gpus-per-replica); configs that
    # others copy should spell the real flags.
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = set(subcommands.choices[args.command]._option_string_actions)
    for word in argv:
        if word.startswith("--") and word != "--":
            assert word.partition("=")[0] in flags, f"{word!r} is not a flag of {args.command}"
    return args


def _checked_config(argv: list[str], workdir: Path) -> Any:
    """Parse with the real parser, then build the config the command would run with."""
    args = _parse(argv)
    if args.command == "embed":
        from pipelines.cli import config_from_args

        if args.config and not Path(args.config).is_absolute():
            args.config = str(workdir / args.config)
        return config_from_args(args)  # JobConfig: validates every value
    if args.command == "serve":
        from deployments.cli import config_from_args

        return config_from_args(args)
    return args


def test_every_command_parses_with_the_real_cli():
    commands = _all_commands()
    seen = {(source, argv[0]) for source, argv, _ in commands if argv}
    # The commands these files are for: a regression that hides one from the finder fails here.
    assert {
        (RAYJOB, "embed"),
        ("aws.yaml", "models"),
        ("gcp.yaml", "models"),
        ("README.md", "embed"),
    } <= seen, seen
    for source, argv, workdir in commands:
        config = _checked_config(argv, workdir)
        if isinstance(config, JobConfig):
            assert config.gpus_per_replica and config.gpus_per_replica > 0, (source, argv)


def test_no_command_escapes_the_finder():
    """Any string that mentions a qwen3-embed subcommand must have been found as a command."""
    for name in _all_yaml():
        for doc in _docs(name):
            for text in _strings(doc):
                if re.search(r"\bqwen3-embed (embed|serve|models)\b", text):
                    assert qwen3_commands(text), (name, text)


# ------------------------------------------------------------------ launcher configs
@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_passes_ray_validation(name: str):
    import jsonschema
    import ray
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = _doc(name)
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(fillout_defaults(config))  # what `ray up` does before launching anything

    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    workers = {key: value for key, value in types.items() if key != config["head_node_type"]}
    assert workers
    for key, node in workers.items():
        assert node["min_workers"] == 0, key
        assert node["max_workers"] >= 1, key
        assert isinstance(node["resources"]["GPU"], int) and node["resources"]["GPU"] >= 1, key
    # The images run the Ray version qwen3-embed is tested with.
    docker = config["docker"]
    for image in (docker["image"], docker.get("head_image", docker["image"])):
        assert f":{ray.__version__}-" in image, image
    # qwen3-embed is installed on every node: in setup_commands (all nodes), not head-only.
    setup = " ".join(config["setup_commands"])
    assert re.search(r"pip install .*qwen3-embed\[", setup), setup
    assert not any(
        "qwen3-embed" in " ".join(node.get("worker_setup_commands", []))
        for node in workers.values()
    )


# ------------------------------------------------------------------------ Serve configs
def _serve_documents() -> list[tuple[str, dict[str, Any]]]:
    documents = [(name, _doc(name)) for name in SERVE_FILES]
    service = _doc(RAYSERVICE)
    documents.append(
        (f"{RAYSERVICE}:serveConfigV2", yaml.safe_load(service["spec"]["serveConfigV2"]))
    )
    return documents


def _app_configs(document: dict[str, Any]) -> list[ServeAppConfig]:
    return [ServeAppConfig.from_args(app["args"]) for app in document["applications"]]


@pytest.mark.parametrize("index", range(len(SERVE_FILES) + 1))
def test_serve_config_resolves_to_the_real_app(index: int):
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    source, document = _serve_documents()[index]
    schema = ServeDeploySchema.model_validate(document)  # what `serve deploy` / KubeRay check
    assert schema.applications, source
    for app in schema.applications:
        assert app.import_path == IMPORT_PATH, source
        module_name, _, attribute = app.import_path.partition(":")
        builder = getattr(importlib.import_module(module_name), attribute)
        assert callable(builder)
        config = ServeAppConfig.from_args(app.args)  # the builder's own validation
        for model in config.models:
            # Explicit GPUs: on a cluster whose GPU workers start at 0, auto would mean CPU.
            assert model.gpus_per_replica is not None and model.gpus_per_replica > 0, (
                source,
                model.name,
            )
        built = call_user_app_builder_with_args_if_necessary(builder, app.args)
        assert type(built).__name__ == "Application"
    proxy_timeout = document.get("http_options", {}).get("request_timeout_s")
    if proxy_timeout is not None:
        for config in _app_configs(document):
            assert config.ingress.model_call_timeout_s < proxy_timeout, source


def test_serve_configs_cover_text_vl_and_both():
    from qwen3_embed.registry import SEED_MODELS

    families = {}
    for name in SERVE_FILES:
        models = [model for config in _app_configs(_doc(name)) for model in config.models]
        families[name] = {SEED_MODELS[model.model].family for model in models}
    assert families == {
        "serve/text.yaml": {"text"},
        "serve/vl.yaml": {"vl"},
        "serve/text-and-vl.yaml": {"text", "vl"},
    }


# ------------------------------------------------------------------------- batch job YAML
def test_job_yaml_loads_through_the_pipeline_config():
    path = CONFIGS / JOB_FILE
    config = JobConfig.from_yaml(path)
    assert config.input and all(item.startswith("s3://") for item in config.input)
    assert config.output.startswith("s3://")
    assert config.gpus_per_replica is not None and config.gpus_per_replica > 0
    # The CLI's --config loads the same thing (flags would override it).
    assert _checked_config(["embed", "--config", str(path)], REPO) == config
    overridden = _checked_config(["embed", "--config", str(path), "--num-replicas", "2"], REPO)
    assert overridden.num_replicas == 2 and overridden.model == config.model


# --------------------------------------------------------------------------------- KubeRay
# Field names of the ray.io/v1 Go types (ray-operator/apis/ray/v1), for the levels we write.
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
    "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy",
    "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
    "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend", "schedule",
}  # fmt: skip
RAYSERVICE_SPEC = {
    "serveConfigV2", "rayClusterConfig", "serveService", "upgradeStrategy",
    "excludeHeadPodFromServeSvc", "serviceUnhealthySecondThreshold",
    "deploymentUnhealthySecondThreshold",
}  # fmt: skip
CLUSTER_SPEC = {
    "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations",
    "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion",
    "workerGroupSpecs", "authOptions",
}  # fmt: skip
HEAD_SPEC = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_SPEC = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}  # fmt: skip
AUTOSCALER_OPTIONS = {
    "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
    "upscalingMode", "env", "envFrom", "volumeMounts", "version",
}  # fmt: skip


def _cluster_spec(name: str) -> dict[str, Any]:
    doc = _doc(name)
    assert doc["apiVersion"] == "ray.io/v1"
    key = {"RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}[doc["kind"]]
    return doc["spec"][key]


def _container(group: dict[str, Any]) -> dict[str, Any]:
    containers = group["template"]["spec"]["containers"]
    return containers[0]  # KubeRay's Ray container is the first one


def _quantity(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _group_gpus(group: dict[str, Any]) -> int:
    """GPUs per pod, checked to agree between the Kubernetes limit and Ray's num-gpus."""
    resources = _container(group)["resources"]
    limit = resources.get("limits", {}).get("nvidia.com/gpu", 0)
    assert isinstance(limit, int), f"nvidia.com/gpu must be a whole number, got {limit!r}"
    request = resources.get("requests", {}).get("nvidia.com/gpu", limit)
    assert request == limit, "Kubernetes needs requests == limits for nvidia.com/gpu"
    ray_gpus = group.get("rayStartParams", {}).get("num-gpus")
    if ray_gpus is not None:
        assert isinstance(ray_gpus, str), "rayStartParams values are strings"
        assert float(ray_gpus) == limit, (ray_gpus, limit)
    return limit


def _group_cpus(group: dict[str, Any]) -> float:
    ray_cpus = group.get("rayStartParams", {}).get("num-cpus")
    if ray_cpus is not None:
        return float(ray_cpus)
    return _quantity(_container(group)["resources"]["limits"]["cpu"])


@pytest.mark.parametrize("name", (RAYJOB, RAYSERVICE))
def test_kuberay_manifest_uses_v1_fields_and_scales_gpus_from_zero(name: str):
    import ray

    doc = _doc(name)
    spec_fields = {"RayJob": RAYJOB_SPEC, "RayService": RAYSERVICE_SPEC}[doc["kind"]]
    assert set(doc["spec"]) <= spec_fields, set(doc["spec"]) - spec_fields
    cluster = _cluster_spec(name)
    assert set(cluster) <= CLUSTER_SPEC, set(cluster) - CLUSTER_SPEC
    assert set(cluster["headGroupSpec"]) <= HEAD_SPEC
    assert set(cluster.get("autoscalerOptions", {})) <= AUTOSCALER_OPTIONS
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["enableInTreeAutoscaling"] is True
    assert _group_gpus(cluster["headGroupSpec"]) == 0, "the head is a CPU pod"
    for params in [cluster["headGroupSpec"]["rayStartParams"]] + [
        group["rayStartParams"] for group in cluster["workerGroupSpecs"]
    ]:
        assert all(isinstance(value, str) for value in params.values()), params
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_SPEC, set(group) - WORKER_SPEC
        assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0, group["groupName"]
        assert group["maxReplicas"] >= 1
        assert _group_gpus(group) >= 1, group["groupName"]
    images = {_container(cluster["headGroupSpec"])["image"]} | {
        _container(group)["image"] for group in cluster["workerGroupSpecs"]
    }
    assert len(images) == 1, f"one image (with qwen3-embed installed) on every pod: {images}"
    if doc["kind"] == "RayJob":
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
        yaml.safe_load(doc["spec"].get("runtimeEnvYAML", "{}"))  # a YAML string, as the CRD wants


def _capacity(name: str) -> tuple[float, list[tuple[int, float]]]:
    """(GPUs at full scale, [(GPUs, CPUs) per pod of each GPU group])."""
    groups = _cluster_spec(name)["workerGroupSpecs"]
    pods = [(_group_gpus(group), _group_cpus(group)) for group in groups]
    total = sum(group["maxReplicas"] * gpus for group, (gpus, _) in zip(groups, pods, strict=True))
    return total, [pod for pod in pods if pod[0] >= 1]


def _fits_on_a_pod(gpus: float, cpus: float, pods: list[tuple[int, float]]) -> bool:
    return any(gpus <= pod_gpus and cpus <= pod_cpus for pod_gpus, pod_cpus in pods)


def test_rayjob_gpu_request_matches_the_worker_groups():
    entrypoint = _doc(RAYJOB)["spec"]["entrypoint"]
    (argv, workdir), *others = qwen3_commands(entrypoint)
    assert not others and argv[0] == "embed"
    config = _checked_config(argv, workdir)
    assert all(item.startswith("s3://") for item in config.input) and config.output.startswith(
        "s3://"
    )
    total, pods = _capacity(RAYJOB)
    assert config.gpus_per_replica and config.gpus_per_replica > 0
    assert _fits_on_a_pod(config.gpus_per_replica, config.cpus_per_replica, pods)
    assert config.num_replicas * config.gpus_per_replica <= total, (config.num_replicas, total)
    # Whole replicas per pod: no GPU left idle by a fraction that does not divide the pod.
    for pod_gpus, _ in pods:
        per_pod = pod_gpus / config.gpus_per_replica
        assert math.isclose(per_pod, round(per_pod)), per_pod


def _max_replicas(model: ModelConfig) -> int:
    return model.autoscale[1] if model.autoscale is not None else model.num_replicas


def test_rayservice_gpu_requests_match_the_worker_groups():
    doc = _doc(RAYSERVICE)
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    models = [model for config in _app_configs(serve_config) for model in config.models]
    assert any(model.autoscale is not None for model in models), "the service autoscales"
    total, pods = _capacity(RAYSERVICE)
    needed = sum(_max_replicas(model) * model.gpus_per_replica for model in models)
    assert needed <= total, f"Serve may ask for {needed} GPUs; the worker groups hold {total}"
    for model in models:
        assert _fits_on_a_pod(model.gpus_per_replica, model.cpus_per_replica, pods), model.name
        for pod_gpus, _ in pods:
            per_pod = pod_gpus / model.gpus_per_replica
            assert math.isclose(per_pod, round(per_pod)), (model.name, per_pod)
    # The API keys the app reads come from the environment of every pod.
    for config in _app_configs(serve_config):
        if config.auth.api_key_env:
            cluster = doc["spec"]["rayClusterConfig"]
            for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
                names = {item["name"] for item in _container(group).get("env", [])}
                assert config.auth.api_key_env in names, group.get("groupName", "head")


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_serve_and_job_gpu_requests_fit_the_launcher_node_types(launcher: str):
    config = _doc(launcher)
    types = config["available_node_types"]
    nodes = [
        (node["resources"]["GPU"], node["resources"]["CPU"], node["max_workers"])
        for key, node in types.items()
        if key != config["head_node_type"]
    ]
    capacity = sum(min(count, config["max_workers"]) * gpus for gpus, _, count in nodes)
    pods = [(gpus, cpus) for gpus, cpus, _ in nodes]
    requests: list[tuple[str, float, float, int]] = []  # (what, gpus, cpus, replicas)
    for name in SERVE_FILES:
        for app in _app_configs(_doc(name)):
            requests += [
                (f"{name}:{m.name}", m.gpus_per_replica, m.cpus_per_replica, _max_replicas(m))
                for m in app.models
            ]
    job = JobConfig.from_yaml(CONFIGS / JOB_FILE)
    requests.append((JOB_FILE, job.gpus_per_replica, job.cpus_per_replica, job.num_replicas))
    for what, gpus, cpus, replicas in requests:
        assert _fits_on_a_pod(gpus, cpus, pods), what
        assert replicas * gpus <= capacity, what


# ------------------------------------------------------------------ live: serve on local Ray
def test_serve_config_serves_on_local_ray(ray_cluster, tiny_text_model_dir, tmp_path):
    import httpx
    from ray import serve
    from serve_support import assert_embeddings_ok, start_serve_once

    from deployments.app import build_app

    port = start_serve_once()
    app = _doc("serve/text.yaml")["applications"][0]
    args = copy.deepcopy(app["args"])
    for model in args["models"]:  # the tiny checkpoint on CPU; everything else as written
        model.update(model=str(tiny_text_model_dir), gpus_per_replica=0, cpus_per_replica=0.25)
    args["ingress"]["cpus_per_replica"] = 0.1
    key_file = tmp_path / "keys"
    key_file.write_text("cluster-configs-key\n")
    args["auth"] = {"api_key_file": str(key_file)}  # the replicas cannot see this process's env
    served_name = args["models"][0]["served_model_name"]

    name, prefix = "cluster-configs-text", "/cluster-configs"
    serve.run(build_app(args), name=name, route_prefix=prefix)
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}{prefix}",
            headers={"Authorization": "Bearer cluster-configs-key"},
            timeout=60,
        ) as client:
            response = client.post(
                "/v1/embeddings",
                json={"model": served_name, "input": ["hello", "a longer text"], "dimensions": 32},
            )
            assert_embeddings_ok(response, count=2, dim=32)
            assert response.json()["model"] == served_name
            assert (
                client.post(
                    "/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer nope"}
                ).status_code
                == 401
            )
    finally:
        serve.delete(name)


@pytest.mark.parametrize("name", (RAYJOB, RAYSERVICE))
def test_kuberay_clusters_use_ray_token_authentication(name: str):
    """Ray 2.60 heads expect a token; KubeRay (>= 1.5.1) makes one and hands it to every pod."""
    assert _cluster_spec(name)["authOptions"] == {"mode": "token"}


@pytest.mark.parametrize("name", ("aws.yaml", "gcp.yaml"))
def test_launcher_nodes_share_one_ray_token(name: str):
    config = yaml.safe_load((CONFIGS / name).read_text())
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [command for command in config[key] if "ray start" in command]
        assert starts and all("RAY_AUTH_MODE=token ray start" in command for command in starts)
