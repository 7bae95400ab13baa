"""The layers' configs' one base: frozen pydantic models, the core's knobs as fields, one error.

Every config of the batch jobs (`JobConfig`, `RerankJobConfig`, the Dataset stages'
`EmbedStageConfig` and `RerankStageConfig`) and of the Serve app (`ServeAppConfig` and its
sections, `ModelConfig` among them) derives from `FrozenConfig`: immutable, unknown keys refused,
old knob names accepted with a FutureWarning. The ones users build from keyword arguments, YAML
or flags are `ReadableConfig`s: a refused value raises `InvalidConfigError` ("invalid <what>:
field rule; field rule"), naming every refused field, in the words `qwen3_embed.options.Rule`
uses, instead of pydantic's multi-line ValidationError. `LoadFields` and `ReplicaFields` are
the core's `LoadOptions` / `ReplicaOptions` knobs as fields, so a knob has one name, default,
rule and help text everywhere.

Lives outside the core (which imports neither pydantic nor the layers) and outside either
layer (neither imports the other).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from qwen3_embed.options import (
    InvalidOptionsError,
    LoadOptions,
    ReplicaOptions,
    rename_deprecated,
    rules,
)


class InvalidConfigError(InvalidOptionsError):
    """A job or stage config refused on construction; the message names each field and rule."""

    code = "invalid_config"


class FrozenConfig(BaseModel):
    """Immutable, and a misspelt key is an error rather than a silently ignored setting. Old
    names of renamed knobs are accepted with a FutureWarning."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _renamed_knobs(cls, values: Any) -> Any:
        if isinstance(values, dict):
            return rename_deprecated(values, cls.__name__)
        return values


class ReadableConfig(FrozenConfig):
    """Raises `InvalidConfigError` ("invalid <what>: field rule; ...") instead of pydantic's
    multi-line ValidationError, for configs users build from keyword arguments and YAML."""

    what: ClassVar[str] = "config"

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise InvalidConfigError(
                f"invalid {self.what}: {describe(error, type(self))}"
            ) from None

    def replace(self, **changes: Any) -> Any:
        """A copy with `changes`, validated like a new config (pydantic's `model_copy` is not)."""
        return type(self)(**{**dict(self), **changes})


def _fields(cls: type) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, (rule, default) in rules(cls).items():
        annotation: Any = Literal[rule.choices] if rule.choices else rule.kind
        if rule.optional:
            annotation = annotation | None
        constraints: dict[str, Any] = {}
        if rule.minimum is not None:
            constraints["ge"] = rule.kind(rule.minimum)
        if rule.choices is None:
            constraints["strict"] = True  # 1 is not True, "5" is not 5: a YAML typo is an error
        if rule.kind is str and rule.choices is None:
            constraints["pattern"] = r"\S"  # not empty, not only blanks
        fields[name] = (
            annotation,
            Field(
                ... if default is dataclasses.MISSING else default,
                description=rule.help,
                **constraints,
            ),
        )
    return fields


class _HoldsLoadOptions(FrozenConfig):
    def load_options(self) -> LoadOptions:
        """The `LoadOptions` this config holds (what its replicas load with)."""
        return LoadOptions.pick(self)


LoadFields = create_model("LoadFields", __base__=_HoldsLoadOptions, **_fields(LoadOptions))
ReplicaFields = create_model("ReplicaFields", __base__=FrozenConfig, **_fields(ReplicaOptions))


def describe(error: ValidationError, model: type[BaseModel]) -> str:
    return "; ".join(_describe_one(item, model) for item in error.errors())


def _describe_one(item: dict[str, Any], model: type[BaseModel]) -> str:
    name = ".".join(
        str(part) for part in item["loc"] if not str(part).startswith(("function-", "literal["))
    )
    name = name or "config"
    kind, value, context = item["type"], item.get("input"), item.get("ctx") or {}
    if kind == "value_error":
        return str(context.get("error", item["msg"])).removeprefix("Value error, ")
    if kind == "missing":
        return f"{name} is required"
    if kind == "extra_forbidden":
        return f"unknown key {name!r}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", context.get("expected", ""))
        return f"{name}={value!r} is invalid; valid values are: {', '.join(choices)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{name} must be true or false"
    if kind in ("string_type", "string_too_short", "string_pattern_mismatch"):
        return f"{name} must be a non-empty string"
    noun = _noun(model, name.split(".")[0])
    if kind in ("greater_than_equal", "greater_than"):
        sign = ">=" if kind == "greater_than_equal" else ">"
        bound = context.get("ge", context.get("gt"))
        return f"{name} must be {noun} {sign} {bound:g}, got {value!r}"
    if kind.startswith(("int_", "float_")):
        return f"{name} must be {noun}, got {value!r}"
    return f"{name}: {item['msg']}"


def _noun(model: type[BaseModel], name: str) -> str:
    info = model.model_fields.get(name)
    kinds = set(get_args(info.annotation)) | {info.annotation} if info is not None else set()
    return "an integer" if int in kinds and float not in kinds else "a number"
