"""Turn a model `source` (hub id, local directory, fsspec URL) into a local directory."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

HUB_OFFLINE_HINT = (
    "The Hugging Face hub could not be reached for {source!r}. Pass a local directory "
    "(--model DIR), set HF_HUB_OFFLINE=1 with the model already in the hub cache, or generate a "
    "tiny random-weight model for smoke tests with `qwen3-embed make-tiny-model DIR` "
    "(random weights: its vectors mean nothing)."
)


def cache_root() -> Path:
    """Where fsspec-hosted checkpoints are copied; override with QWEN3_EMBED_CACHE."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwen3-embed"
    return Path(os.environ.get("QWEN3_EMBED_CACHE", default))


def is_url(source: str) -> bool:
    return "://" in source


def resolve_model_dir(
    source: str | os.PathLike, revision: str | None = None, *, local_only: bool = False
) -> Path:
    """A local directory holding `config.json` for `source`.

    - an existing local directory is used as it is;
    - a URL (`s3://`, `gs://`, `memory://`, ...) is copied once into the cache, keyed by URL;
    - anything else is a hub id, resolved through `huggingface_hub` (which honours
      `HF_HUB_OFFLINE` and its own cache).

    `local_only`: copy and download nothing (a cheap look, e.g. the batch job's "nothing to do"
    check): a URL's copy already in the cache, a hub id's snapshot already in the hub's cache,
    else FileNotFoundError.
    """
    text = os.fspath(source)
    local = Path(text).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"model directory {local} has no config.json")
        return local
    if is_url(text):
        return _copy_from_fsspec(text, local_only)
    if looks_like_path(text):
        raise FileNotFoundError(
            f"no such local directory: model directory {text!r} does not exist "
            f"(relative paths are resolved against the working directory, {os.getcwd()})"
        )
    if local_only:
        return _hub_cache_dir(text, revision)
    return _download_from_hub(text, revision)


def looks_like_path(source: str) -> bool:
    """True when `source` cannot be a hub id (`name` or `namespace/name`), so it must have been
    meant as a local directory: `./x`, `/x`, `~/x`, `x/` (trailing slash), `a/b/c`, a Windows path,
    or anything with characters a hub id may not hold."""
    if source.startswith((".", "/", "~")) or source.endswith(("/", os.sep)):
        return True
    if os.sep != "/" and os.sep in source:
        return True
    parts = source.split("/")
    return len(parts) > 2 or not all(_HUB_NAME.fullmatch(part) for part in parts)


# A hub repo name or namespace: alphanumerics, '-', '_', '.', not starting or ending with '-'/'.'
_HUB_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")


def _copy_from_fsspec(url: str, local_only: bool = False) -> Path:
    import fsspec

    target = cache_root() / "fsspec" / hashlib.sha256(url.encode()).hexdigest()[:24]
    done_marker = target / ".complete"
    if done_marker.exists():
        return target
    if local_only:
        raise FileNotFoundError(f"{url} has no complete copy in the cache ({target}) yet")
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(f"{root.rstrip('/')}/config.json"):
        raise FileNotFoundError(f"{url} has no config.json")
    target.mkdir(parents=True, exist_ok=True)
    for remote in fs.find(root):
        relative = remote[len(root.rstrip("/")) :].lstrip("/")
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(destination))
    done_marker.touch()  # written last, so an interrupted copy is redone, not trusted
    return target


def _download_from_hub(model_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, revision=revision))
    except Exception as error:  # the hub raises many types for "unreachable" / "not cached"
        raise OSError(
            HUB_OFFLINE_HINT.format(source=model_id) + f" ({type(error).__name__}: {error})"
        ) from error


def _hub_cache_dir(model_id: str, revision: str | None) -> Path:
    """The snapshot of `model_id` already in the hub's local cache; no network."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, revision=revision, local_files_only=True))
    except Exception as error:  # the hub raises several types for "not cached"
        raise FileNotFoundError(
            f"{model_id!r} is not in the Hugging Face hub's local cache "
            f"({type(error).__name__}: {error})"
        ) from error
