"""The model-loading and replica knobs, each defined once: name, type, default, rule and help.

`LoadOptions` says how to load a model (`Embedder.from_options`); `ReplicaOptions` how many
copies run and on what. The batch job, the Ray Dataset stage and the Serve model config hold
these fields under the same names (their pydantic models take them from here, through the
layers' shared config base), and the CLIs build their flags, defaults and help from them
(`add_flags`). Nothing here imports torch or pydantic: the CLIs and a GPU machine with only the
core's dependencies import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import Qwen3EmbedError
from .vocabulary import ATTN_IMPLEMENTATIONS, DTYPES, FORWARD_MODES

# Short spellings the Python API also takes (`Embedder.from_pretrained(dtype="bf16")`).
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# Tokens per forward pass when none is given: padded (CPU, non-Qwen, VL) forwards pay for their
# padding and a (B, T) attention working set; a packed forward on a GPU pays for real tokens only,
# and 0.6B needs tens of thousands of them per pass to keep an H100's matrix units busy.
DEFAULT_MAX_BATCH_TOKENS = 16384
DEFAULT_GPU_PACKED_BATCH_TOKENS = 65536

# Old names of renamed knobs (config keys, keyword arguments and, as --flags, CLI options):
# accepted for one release with a FutureWarning.
DEPRECATED_NAMES = {"batch_tokens": "max_batch_tokens", "replicas": "num_replicas"}


class InvalidOptionsError(Qwen3EmbedError, ValueError):
    """A knob has a value its rule refuses; the message names each knob and its rule."""

    code = "invalid_options"


@dataclass(frozen=True)
class Rule:
    """What a knob accepts. `kind` is the Python type of its values; `optional` allows None."""

    help: str
    kind: type
    optional: bool = False
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    metavar: str | None = None

    def problem(self, name: str, value: Any) -> str | None:
        """Why `value` is not acceptable for the knob `name`, or None."""
        if value is None:
            return None if self.optional else f"{name} is required"
        if self.kind is bool:
            return None if isinstance(value, bool) else f"{name} must be true or false"
        if self.kind in (int, float):
            allowed = (int,) if self.kind is int else (int, float)
            noun = "an integer" if self.kind is int else "a number"
            low = "" if self.minimum is None else f" >= {self.minimum:g}"
            if isinstance(value, bool) or not isinstance(value, allowed):
                return f"{name} must be {noun}{low}, got {value!r}"
            if self.minimum is not None and value < self.minimum:
                return f"{name} must be {noun}{low}, got {value!r}"
            return None
        if not isinstance(value, str) or not value.strip():
            return f"{name} must be a non-empty string"
        if self.choices is not None and value not in self.choices:
            return f"{name}={value!r} is invalid; valid values are: {', '.join(self.choices)}"
        return None


def knob(default: Any = dataclasses.MISSING, **rule: Any) -> Any:
    """A dataclass field carrying its `Rule`."""
    return field(default=default, metadata={"rule": Rule(**rule)})


def rules(cls: type) -> dict[str, tuple[Rule, Any]]:
    """name -> (rule, default) for every knob of an options dataclass, in declaration order."""
    return {
        item.name: (item.metadata["rule"], item.default)
        for item in dataclasses.fields(cls)
        if "rule" in item.metadata
    }


def help_with_default(text: str, default: Any) -> str:
    """A knob's help text for a flag or a reference: its description and its plain default."""
    if default in (dataclasses.MISSING, None, ()):
        return text
    shown = str(default).lower() if isinstance(default, bool) else default
    return f"{text} (default: {shown})"


def _problems(instance: Any) -> Iterator[str]:
    for name, (rule, _) in rules(type(instance)).items():
        problem = rule.problem(name, getattr(instance, name))
        if problem is not None:
            yield problem


@dataclass(frozen=True)
class LoadOptions:
    """How to load one model, validated on construction (`InvalidOptionsError` lists each
    refused knob). `Embedder.from_options(options)` loads it."""

    model: str = knob(
        kind=str, metavar="M", help="hub id, local checkpoint folder, or fsspec URL of one"
    )
    revision: str | None = knob(
        None, kind=str, optional=True, metavar="REV", help="hub revision (branch, tag or commit)"
    )
    device: str = knob(
        "auto",
        kind=str,
        metavar="D",
        help="torch device: auto (cuda when there is a GPU, else cpu), cpu, cuda, cuda:N",
    )
    dtype: str = knob(
        "auto",
        kind=str,
        choices=DTYPES,
        help="compute dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16",
    )
    max_length: int | None = knob(
        None,
        kind=int,
        optional=True,
        minimum=1,
        metavar="N",
        help="token limit per input; default: the model's",
    )
    max_batch_tokens: int | None = knob(
        None,
        kind=int,
        optional=True,
        minimum=1,
        metavar="T",
        help="token budget of one forward pass, padding included when padded (batches are "
        f"split to fit); default: {DEFAULT_GPU_PACKED_BATCH_TOKENS} when packed on a GPU, "
        f"else {DEFAULT_MAX_BATCH_TOKENS}",
    )
    forward_mode: str = knob(
        "auto",
        kind=str,
        choices=FORWARD_MODES,
        help="batch layout of the forward passes: packed (padding-free, Qwen3 text), padded, "
        "or auto = packed for Qwen3 text where a varlen attention kernel runs (a GPU in "
        "bf16/fp16), else padded",
    )
    attn_implementation: str = knob(
        "auto",
        kind=str,
        choices=ATTN_IMPLEMENTATIONS,
        help="attention kernel of the padded path: auto (= sdpa), sdpa, flash_attention_2 "
        "(needs flash-attn), eager",
    )
    compile: bool = knob(
        False,
        kind=bool,
        help="run the backbone through torch.compile (slower start, faster forwards)",
    )

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise InvalidOptionsError("invalid load options: " + "; ".join(problems))

    @classmethod
    def pick(cls, values: Any) -> LoadOptions:
        """The load options held by a config (any object with these attributes)."""
        return cls(**{name: getattr(values, name) for name in rules(cls)})


@dataclass(frozen=True)
class ReplicaOptions:
    """How many copies of the model run, and what each one reserves."""

    num_replicas: int = knob(
        1, kind=int, minimum=1, metavar="N", help="model replicas (each holds one copy)"
    )
    gpus_per_replica: float | None = knob(
        None,
        kind=float,
        optional=True,
        minimum=0,
        metavar="G",
        help="GPUs per replica; default: 1 when the cluster has GPUs, else 0 (CPU)",
    )
    cpus_per_replica: float = knob(
        1.0, kind=float, minimum=0, metavar="C", help="CPUs reserved per replica"
    )

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise InvalidOptionsError("invalid replica options: " + "; ".join(problems))


def rename_deprecated(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`values` with old knob names replaced by the current ones (FutureWarning for each)."""
    renamed = dict(values)
    for old, new in DEPRECATED_NAMES.items():
        if old not in renamed:
            continue
        if new in renamed:
            raise InvalidOptionsError(f"{where}: give {new}, not both {new} and {old}")
        warnings.warn(
            f"{where}: {old!r} is deprecated and will be removed; use {new!r}",
            FutureWarning,
            stacklevel=3,
        )
        renamed[new] = renamed.pop(old)
    return renamed


def add_flags(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    *,
    skip: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
    defaults: bool = False,
) -> None:
    """One `--flag-name` per knob of `cls`, with its help, choices and type, plus hidden
    deprecated aliases (`skip` / `only` choose the knobs). `defaults=False` leaves every flag None when not given (a config file
    or the config's own default then applies); True sets the knob's default."""
    for name, (rule, default) in rules(cls).items():
        if name in skip or (only is not None and name not in only):
            continue
        if rule.kind is bool:
            kwargs: dict[str, Any] = {"action": argparse.BooleanOptionalAction}
        else:
            kwargs = {"type": rule.kind}
            if rule.choices is not None:
                kwargs["choices"] = rule.choices
            if rule.metavar is not None:
                kwargs["metavar"] = rule.metavar
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=default if defaults and default is not dataclasses.MISSING else None,
            help=help_with_default(rule.help, default),
            **kwargs,
        )
        for old, new in DEPRECATED_NAMES.items():
            if new == name:  # the old spelling: same destination, a warning, not in --help
                parser.add_argument(
                    f"--{old.replace('_', '-')}",
                    dest=name,
                    action=_DeprecatedFlag,
                    help=argparse.SUPPRESS,
                    **kwargs,
                )


class _DeprecatedFlag(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        new = DEPRECATED_NAMES[(option_string or "").lstrip("-").replace("-", "_")]
        warnings.warn(
            f"{option_string} is deprecated and will be removed; use --{new.replace('_', '-')}",
            FutureWarning,
            stacklevel=2,
        )
        setattr(namespace, self.dest, values)
