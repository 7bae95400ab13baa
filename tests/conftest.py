"""Session-wide fixtures: tiny random checkpoints built once, the real MiniLM weights, local Ray.

Every checkpoint is loaded through `Embedder.from_pretrained(path)`, the same path users take
with a hub id. Nothing here touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def vl_extra_missing() -> str | None:
    """Why the `[vl]` extra is unusable here (the core's own check), or None when it is
    installed. `importorskip("qwen3_embed.vl")` cannot tell: that package imports without it."""
    from qwen3_embed.errors import MissingExtraError
    from qwen3_embed.vl.extra import require_vl_extra

    try:
        require_vl_extra()
    except MissingExtraError as error:
        return str(error)
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_vl: needs the [vl] extra; skipped without it")


def cuda_missing() -> str | None:
    """Why tests marked `gpu` cannot run here, or None when torch sees a CUDA device."""
    import torch

    if torch.cuda.is_available():
        return None
    return f"needs a CUDA device (torch {torch.__version__} sees none); run `python -m pytest -m gpu` on a GPU machine"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # CPU CI collects the `gpu` tests and skips them, saying why (not a silent deselect).
    if any("gpu" in item.keywords for item in items):
        reason = cuda_missing()
        if reason is not None:
            for item in items:
                if "gpu" in item.keywords:
                    item.add_marker(pytest.mark.skip(reason=reason))
    reason = vl_extra_missing()
    if reason is None:
        return
    for item in items:
        if "requires_vl" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def tiny_text_model_dir(tmp_path_factory) -> Path:
    """Qwen3 architecture, tokenizer whose post-processor appends <|endoftext|> (as shipped)."""
    from qwen3_embed.testing import make_tiny_text_model

    return make_tiny_text_model(tmp_path_factory.mktemp("tiny-text"))


@pytest.fixture(scope="session")
def tiny_text_model_noeos_dir(tmp_path_factory) -> Path:
    """Same weights, tokenizer without the EOS post-processor (older hub revisions)."""
    from qwen3_embed.testing import make_tiny_text_model

    return make_tiny_text_model(tmp_path_factory.mktemp("tiny-text-noeos"), append_eos=False)


@pytest.fixture(scope="session")
def tiny_text_embedder(tiny_text_model_dir):
    from qwen3_embed import Embedder

    return Embedder.from_pretrained(tiny_text_model_dir, device="cpu")


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One local Ray cluster for the whole session (2 CPUs, loopback only), with the environment
    `qwen3-embed serve` gives its private Ray: the in-process Serve tests then run behind the
    HTTP proxy users get by default (HAProxy on Linux). QWEN3_EMBED_TEST_HTTP_PROXY=ray runs
    them behind Ray's Python proxy instead."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        from deployments.ray_env import apply_environment, resolve_http_proxy, serve_environment

        requested = os.environ.get("QWEN3_EMBED_TEST_HTTP_PROXY", "auto")
        launcher_dir = tmp_path_factory.mktemp("haproxy-launcher")
        proxy = resolve_http_proxy(requested, private=True)  # type: ignore[arg-type]
        wanted = serve_environment(proxy, "127.0.0.1", launcher_dir=launcher_dir)
        saved = {name: os.environ.get(name) for name in wanted}
        # Only Ray's processes get it (they copy the environment at ray.init): the `qwen3-embed
        # serve` commands the tests start must not inherit this cluster's HAProxy ports. Only
        # these variables are put back: ray.init sets others (its token auth) that stay.
        apply_environment(wanted)
        try:
            _init_ray(ray)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


def _init_ray(ray) -> None:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
    )


@pytest.fixture(scope="session")
def tiny_vl_model_dir(tmp_path_factory) -> Path:
    """Qwen3-VL architecture (text + vision towers, deepstack) with a Qwen3-VL-style processor."""
    reason = vl_extra_missing()
    if reason is not None:
        pytest.skip(reason)
    from qwen3_embed.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-vl"), family="vl")


@pytest.fixture(scope="session")
def tiny_vl_embedder(tiny_vl_model_dir):
    from qwen3_embed import Embedder

    return Embedder.from_pretrained(tiny_vl_model_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_text_reranker_dir(tmp_path_factory) -> Path:
    """A Qwen3-Reranker-like checkpoint: Qwen3ForCausalLM, head tied to the input embeddings (as
    the 0.6B), tokenizer holding `yes` / `no`. Its directory name says "reranker"."""
    from qwen3_embed.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-text-reranker"), task="rerank")


@pytest.fixture(scope="session")
def tiny_text_reranker(tiny_text_reranker_dir):
    from qwen3_embed import Reranker

    return Reranker.from_pretrained(tiny_text_reranker_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_vl_reranker_dir(tmp_path_factory) -> Path:
    """A Qwen3-VL-Reranker-like checkpoint: Qwen3VLForConditionalGeneration with its own LM head
    (untied), tokenizer holding `yes` / `no`. Its directory name says "reranker"."""
    reason = vl_extra_missing()
    if reason is not None:
        pytest.skip(reason)
    from qwen3_embed.testing import make_tiny_model

    return make_tiny_model(
        tmp_path_factory.mktemp("tiny-vl-reranker"),
        family="vl",
        task="rerank",
        tie_word_embeddings=False,
    )


@pytest.fixture(scope="session")
def tiny_vl_reranker(tiny_vl_reranker_dir):
    from qwen3_embed import Reranker

    return Reranker.from_pretrained(tiny_vl_reranker_dir, device="cpu")
