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
    """A config refused on construction; the message names each refused field and its rule."""

    code = "invalid_config"


class FrozenConfig(BaseModel):
    """Immutable, and a misspelt key is an error rather than a silently ignored setting."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ReadableConfig(FrozenConfig):
    """Raises `InvalidConfigError` ("invalid <what>: field rule; ...") instead of pydantic's
    multi-line ValidationError, whether built from keyword arguments (`Config(...)`) or from a
    mapping (`Config.model_validate(yaml)`). A ReadableConfig inside another is validated as part
    of the outer one, so the outer error names the inner fields by path
    (`models[0].max_batch_tokens must be ...`)."""

    what: ClassVar[str] = "config"

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise refused(error, type(self)) from None

    # pydantic calls a model's own __init__ when it validates it nested in another model (and
    # the error would then lose its path); this marker, the one BaseModel.__init__ carries, says
    # that this __init__ only wraps the standard one, so nested validation skips it.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as error:
            raise refused(error, cls) from None

    def replace(self, **changes: Any) -> Any:
        """A copy with `changes`, validated like a new config (pydantic's `model_copy` is not)."""
        return type(self)(**{**dict(self), **changes})


def refused(error: ValidationError, model: type[BaseModel]) -> InvalidConfigError:
    """`error` as one line naming every refused field: "invalid <what>: rule; rule"."""
    what = getattr(model, "what", "config")
    return InvalidConfigError(f"invalid {what}: {describe(error, model)}")


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


class _HoldsKnobs(FrozenConfig):
    """A config holding the core's knobs takes their old names too, with a FutureWarning."""

    @model_validator(mode="before")
    @classmethod
    def _renamed_knobs(cls, values: Any) -> Any:
        if isinstance(values, dict):
            return rename_deprecated(values, cls.__name__)
        return values


class _HoldsLoadOptions(_HoldsKnobs):
    def load_options(self) -> LoadOptions:
        """The `LoadOptions` this config holds (what its replicas load with)."""
        return LoadOptions.pick(self)


LoadFields = create_model("LoadFields", __base__=_HoldsLoadOptions, **_fields(LoadOptions))
ReplicaFields = create_model("ReplicaFields", __base__=_HoldsKnobs, **_fields(ReplicaOptions))


def describe(error: ValidationError, model: type[BaseModel]) -> str:
    items = error.errors()
    # A list whose refused items leave it too short after validation: the items say why.
    inner = {item["loc"][:-1] for item in items} | {item["loc"][:-2] for item in items}
    return "; ".join(
        _describe_one(item, model)
        for item in items
        if not (item["type"] == "too_short" and item["loc"] in inner)
    )


def _path(loc: tuple[Any, ...]) -> tuple[str, list[str]]:
    """A pydantic location as the user writes it (`models[0].max_batch_tokens`), and its field
    names (`["models", "max_batch_tokens"]`); pydantic's own markers (union members, literal
    choices, validator names) are left out."""
    shown, names = "", []
    for part in loc:
        if isinstance(part, int):
            shown += f"[{part}]"
        elif not str(part).startswith(("function-", "literal[")):
            shown += f".{part}" if shown else str(part)
            names.append(str(part))
    return shown, names


def _describe_one(item: dict[str, Any], model: type[BaseModel]) -> str:
    name, names = _path(item["loc"])
    name = name or "config"
    kind, value, context = item["type"], item.get("input"), item.get("ctx") or {}
    if kind == "value_error":
        message = str(context.get("error", item["msg"])).removeprefix("Value error, ")
        if not names:
            return message  # a rule of the whole config: its message names the fields
        leaf = names[-1]
        if message.startswith(leaf):
            return name + message[len(leaf) :]  # the field's rule, under its full path
        return message if leaf in message else f"{name}: {message}"
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
    if kind == "too_short":
        return f"{name} must hold at least {context.get('min_length', 1)} item(s)"
    noun = _noun(model, names)
    if kind in ("greater_than_equal", "greater_than"):
        sign = ">=" if kind == "greater_than_equal" else ">"
        bound = context.get("ge", context.get("gt"))
        return f"{name} must be {noun} {sign} {bound:g}, got {value!r}"
    if kind.startswith(("int_", "float_")):
        return f"{name} must be {noun}, got {value!r}"
    return f"{name}: {item['msg']}"


def _noun(model: type[BaseModel], names: list[str]) -> str:
    """ "an integer" or "a number", from the annotation of the field at `names` (followed into
    nested configs)."""
    annotation: Any = None
    current: type[BaseModel] | None = model
    for name in names:
        info = current.model_fields.get(name) if current is not None else None
        if info is None:
            return "a number"
        annotation, current = info.annotation, _model_in(info.annotation)
    kinds = _leaf_types(annotation)
    return "an integer" if int in kinds and float not in kinds else "a number"


def _leaf_types(annotation: Any) -> set[Any]:
    args = get_args(annotation)
    if not args:
        return {annotation}
    return set().union(*(_leaf_types(arg) for arg in args if arg is not Ellipsis))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The config class an annotation holds (`ModelConfig`, `tuple[ModelConfig, ...]`, ...)."""
    return next(
        (
            kind
            for kind in _leaf_types(annotation)
            if isinstance(kind, type) and issubclass(kind, BaseModel)
        ),
        None,
    )
