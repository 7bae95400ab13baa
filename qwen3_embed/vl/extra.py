"""The `[vl]` extra: checked once, where a VL model is asked for, with an actionable error."""

from __future__ import annotations

import importlib

from ..errors import MissingExtraError

# import name -> distribution name, as pip knows it
VL_EXTRA_MODULES = {"torchvision": "torchvision", "qwen_vl_utils": "qwen-vl-utils", "av": "av"}
INSTALL_HINT = "pip install 'qwen3-embed[vl]'"


def require_vl_extra() -> None:
    """Raise MissingExtraError naming every missing package of the `[vl]` extra."""
    missing = []
    for module, distribution in VL_EXTRA_MODULES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(distribution)
    if missing:
        raise MissingExtraError(
            f"Qwen3-VL-Embedding models need the [vl] extra (missing: {', '.join(missing)}); "
            f"install it with: {INSTALL_HINT}"
        )
