"""Pydantic v2 glue for configs: strict field types, frozen sections, byte sizes and one-line errors.

The config sections (:mod:`jaxcnn.runner.config`) are :class:`Section` models: frozen, unknown keys
forbidden, every field with a default and a ``Field(description=...)``. Field types are strict (YAML
``"10"`` is not an int, ``1`` is not a bool); an int is accepted where a float is expected, and a YAML
list where a tuple is. Every pydantic ``ValidationError`` becomes a one-line :class:`ConfigError` naming
the dotted key and the valid choices (see :func:`explain`).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, Strict, ValidationError
from pydantic_core import PydanticCustomError

# The error, the check and the size parser live below the runner (jaxcnn.yaml_io, shared with
# `jaxcnn plan`); re-exported here for the config models.
from jaxcnn.yaml_io import BYTE_SIZE_FORMS as BYTE_SIZE_FORMS
from jaxcnn.yaml_io import ConfigError as ConfigError
from jaxcnn.yaml_io import check as check
from jaxcnn.yaml_io import parse_bytes as parse_bytes


def fail(message: str, sub: str = "") -> typing.NoReturn:
    """Rejects a value inside a pydantic validator; :func:`explain` prints ``<key><sub>: <message>``.

    Args:
      message: what is wrong and what would be valid (without the key).
      sub: key suffix below the validated field or section, e.g. ``"[1]"`` or ``".path"``.
    """
    raise PydanticCustomError("config", "{message}", {"message": message, "sub": sub})


class FrozenDict(dict):
    """A read-only, hashable ``dict`` (config mappings such as ``model.options``)."""

    def _readonly(self, *args: Any, **kwargs: Any) -> typing.NoReturn:
        raise TypeError("config mappings are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _readonly  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=repr)))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))


K = TypeVar("K")
V = TypeVar("V")

Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Float = Annotated[float, Strict()]  # strict float still takes an int (1 -> 1.0), never a bool or str
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
NonNegativeFloat = Annotated[float, Strict(), Field(ge=0)]
FrozenMapping = Annotated[Mapping[K, V], AfterValidator(FrozenDict)]
"""``FrozenMapping[Str, Int]``: a YAML mapping, stored as a :class:`FrozenDict`."""


def _byte_size(value: Any) -> int | float:
    try:
        return parse_bytes(value)
    except ValueError as e:
        fail(str(e))


ByteSize = Annotated[int | float, PlainValidator(_byte_size, json_schema_input_type=int | float | str)]
"""Bytes given as ``16GiB``, ``512MiB``, ``2e9``, ``inf`` or a number (see :func:`parse_bytes`)."""


class _SectionMeta(type(BaseModel)):
    """Turns the ``ValidationError`` of a direct construction (``MeshConfig(n=0)``) into a ConfigError.

    (Not an ``__init__`` override: pydantic would call that for nested sections too.)
    """

    def __call__(cls, *args: Any, **data: Any) -> Any:
        try:
            return super().__call__(*args, **data)
        except ValidationError as e:
            raise ConfigError(explain(e, cls, data, cls.key_path)) from None


class Section(BaseModel, metaclass=_SectionMeta):
    """A frozen config model: unknown keys are errors; construction errors are :class:`ConfigError`.

    ``key_path`` is the dotted path of the section in the whole config (``"mesh"``), so that building
    one directly (``MeshConfig(n=0)``) names the same key as loading a file does (``mesh.n: ...``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    key_path: ClassVar[str] = ""

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"the config is frozen: cannot set {name!r} (build a new one with from_dict)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"the config is frozen: cannot delete {name!r}")


S = TypeVar("S", bound=BaseModel)


def validate(cls: type[S], data: Any, prefix: str = "") -> S:
    """Validates plain data (YAML-loaded) into ``cls``.

    Raises:
      ConfigError: the first problem, on one line (see :func:`explain`).
    """
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(explain(e, cls, data, prefix)) from None


def _strip(tp: Any) -> tuple[Any, list[Any]]:
    """``Annotated[T, *meta]`` -> ``(T, meta)``."""
    meta: list[Any] = []
    while typing.get_origin(tp) is Annotated:
        tp, *more = typing.get_args(tp)
        meta = [*more, *meta]
    return tp, meta


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _is_mapping(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return origin is not None and isinstance(origin, type) and issubclass(origin, Mapping)


def type_name(tp: Any) -> str:
    """A field type in words: ``int``, ``one of 'sgd', 'adam'``, ``list of str``, ``mapping of ...``."""
    tp, _ = _strip(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if _is_mapping(tp):
        key_t, val_t = typing.get_args(tp)
        return f"mapping of {type_name(key_t)} to {type_name(val_t)}"
    if _is_model(tp):
        return f"mapping (section {tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _bounds(meta: list[Any]) -> str:
    """``Field(gt=0, lt=1)`` metadata -> ``in (0, 1)``; ``Field(ge=1)`` -> ``>= 1``."""
    low = next(((m.ge, "[", ">=") for m in meta if getattr(m, "ge", None) is not None), None)
    low = low or next(((m.gt, "(", ">") for m in meta if getattr(m, "gt", None) is not None), None)
    high = next(((m.le, "]", "<=") for m in meta if getattr(m, "le", None) is not None), None)
    high = high or next(((m.lt, ")", "<") for m in meta if getattr(m, "lt", None) is not None), None)
    if low and high:
        return f"in {low[1]}{low[0]}, {high[0]}{high[1]}"
    bound = low or high
    return f"{bound[2]} {bound[0]}" if bound else "within its bounds"


_CONSTRAINTS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def explain(error: ValidationError, cls: type[BaseModel], data: Any, prefix: str = "") -> str:
    """The first error of ``error`` as one line: ``<dotted key>: <problem>, <valid choices>``.

    Forms: ``unknown config key 'train.stepz'; valid keys at 'train': steps, ...``;
    ``train.steps: expected int, got 'ten' (str)``; ``train.steps: must be >= 1, got 0``; and a
    validator's own message (:func:`fail`) after its key.

    Args:
      error: from validating ``data`` into ``cls``.
      cls: the model validated.
      data: the plain data validated (values in messages are the data's own, e.g. a whole list).
      prefix: dotted key of ``cls`` in the config ("" for the top level).
    """
    err = error.errors(include_url=False)[0]
    tp: Any = cls
    meta: list[Any] = []
    path, value = prefix, data
    loc = list(err["loc"])
    for i, part in enumerate(loc):
        tp, more = _strip(tp)
        meta = [*meta, *more]
        if typing.get_origin(tp) in (Union, types.UnionType):
            break  # the rest of loc names union members: report the union as a whole
        if _is_model(tp):
            if part not in tp.model_fields:
                where = f"'{path}'" if path else "the top level"
                return f"unknown config key '{_join(path, part)}'; valid keys at {where}: " + ", ".join(
                    tp.model_fields
                )
            field = tp.model_fields[part]
            tp, meta, path = field.annotation, list(field.metadata), _join(path, part)
        elif typing.get_origin(tp) is tuple:
            tp, meta, path = typing.get_args(tp)[0], [], f"{path}[{part}]"
        elif _is_mapping(tp):
            if i + 1 < len(loc) and loc[i + 1] == "[key]":
                return f"{path}: keys must be {type_name(typing.get_args(tp)[0])}, got {_describe(part)}"
            tp, meta, path = typing.get_args(tp)[1], [], _join(path, part)
        else:
            break
        value = _child(value, part)
    kind = err["type"]
    if kind == "config":
        return f"{path}{err['ctx']['sub']}: {err['ctx']['message']}"
    if kind in _CONSTRAINTS:
        return f"{path}: must be {_bounds(meta)}, got {err['input']!r}"
    if kind.endswith(("_type", "_parsing", "_from_float")) or kind == "literal_error":
        got = err["input"] if value is _MISSING else value
        return f"{path or 'config'}: expected {type_name(tp)}, got {_describe(got)}"
    return (
        f"{path or 'config'}: {' '.join(str(err['msg']).split())}"  # pragma: no cover - other pydantic errors
    )


_MISSING = object()


def _child(value: Any, part: Any) -> Any:
    """``value[part]`` of the plain data, or ``_MISSING``."""
    if isinstance(value, Mapping) and part in value:
        return value[part]
    if isinstance(part, int) and isinstance(value, list | tuple) and 0 <= part < len(value):
        return value[part]
    return _MISSING


def _join(path: str, part: Any) -> str:
    return f"{path}.{part}" if path else str(part)


def to_plain(obj: Any) -> Any:
    """Models / tuples / mappings -> dicts / lists / scalars (YAML-safe), in field order."""
    if isinstance(obj, BaseModel):
        return {name: to_plain(getattr(obj, name)) for name in type(obj).model_fields}
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    return obj
