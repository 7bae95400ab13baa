"""What the layers above the core add to its command line, found through entry points.

The core is the bottom floor: it never names the layers. Each layer registers what it adds in
the project's `pyproject.toml` (`[project.entry-points."qwen3_embed.commands"]` and
`[project.entry-points."qwen3_embed.cluster_doctor"]`), and the core finds them in the installed
distribution's metadata, importing a layer only when it is asked for. So `qwen3-embed models`
never imports Ray, and a layer that is not installed is a clear error, not a traceback.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .errors import Qwen3EmbedError

# name -> `add_parser(subparsers)`; the parser it adds sets `handler` (args -> exit code)
COMMANDS = "qwen3_embed.commands"
# one entry, `run_on_cluster(address, doctor_kwargs, as_json) -> exit code`
CLUSTER_DOCTOR = "qwen3_embed.cluster_doctor"


class LayerNotInstalledError(Qwen3EmbedError, ImportError):
    """A registered layer's module cannot be imported, or nothing is registered for what was
    asked (an install without the layers, or stale metadata: reinstall the project)."""

    code = "layer_not_installed"


def registered(group: str) -> dict[str, EntryPoint]:
    """The entry points of `group` by name, in name order (the first of a name wins)."""
    found: dict[str, EntryPoint] = {}
    for point in sorted(entry_points(group=group), key=lambda point: point.name):
        found.setdefault(point.name, point)
    return found


def load(point: EntryPoint) -> Any:
    """The object `point` names, or `LayerNotInstalledError` saying which and why."""
    try:
        return point.load()
    except ImportError as error:
        raise LayerNotInstalledError(
            f"{point.name!r} is registered in {point.group!r} as {point.value}, which cannot be "
            f"imported ({type(error).__name__}: {error}); reinstall the project "
            "(`pip install qwen3-embed`, or `pip install -e .` in a checkout)"
        ) from None


def load_one(group: str, name: str, what: str) -> Any:
    """The object registered as `name` in `group`; `what` says in the error what needs it."""
    point = registered(group).get(name)
    if point is None:
        raise LayerNotInstalledError(
            f"{what} needs an entry point {name!r} in the group {group!r}, and none is "
            "installed; reinstall the project (`pip install qwen3-embed`, or `pip install -e .` "
            "in a checkout)"
        )
    return load(point)
