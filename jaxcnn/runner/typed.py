"""Plain YAML data → frozen, typed dataclasses, with errors that name the key.

Supported field types: ``bool``, ``int``, ``float`` (ints are accepted, and so are strings in scientific
notation such as ``1e-3``, which YAML 1.1 reads as strings), ``str``, ``Literal[...]``
(the message lists the choices), ``tuple[T, ...]`` (from a YAML list), ``Mapping[str, T]`` (from a YAML
mapping; stored read-only), unions of these (``str | tuple[str, ...]``), and nested dataclasses (from a
YAML mapping). Every dataclass field has a default, so a YAML file only lists what it changes.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")
_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the valid choices."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (Mapping, dict, typing.Mapping) or tp is Mapping:
        key_t, val_t = typing.get_args(tp)
        return f"mapping of {_type_name(key_t)} to {_type_name(val_t)}"
    if dataclasses.is_dataclass(tp):
        return f"mapping (section {tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def convert(tp: Any, value: Any, key: str) -> Any:
    """Checks ``value`` against the field type ``tp`` and returns the stored (frozen) value.

    Args:
      tp: the resolved field type.
      value: the YAML-loaded value.
      key: dotted key path, for messages.

    Returns:
      The value to store: a dataclass instance, tuple, read-only mapping or scalar.

    Raises:
      ConfigError: the value does not have the expected type.
    """
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")
        return build(tp, value, key)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return convert(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) or value not in choices:
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")
        return value
    if origin is tuple:
        (elem,) = typing.get_args(tp)[:1]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")
        return tuple(convert(elem, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is not None and (origin is Mapping or issubclass(origin, Mapping)):
        key_t, val_t = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")
        out = {convert(key_t, k, f"{key} key"): convert(val_t, v, f"{key}.{k}") for k, v in value.items()}
        return types.MappingProxyType(out)
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.match(value):
            return float(value)  # PyYAML (YAML 1.1) reads 1e-3 as a string
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected float, got {_describe(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {_describe(value)}")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported config field type {tp!r} at {key}")  # a schema bug, not a user error


def build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Builds dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Args:
      cls: a dataclass whose fields all have defaults.
      data: the YAML mapping for this section.
      prefix: dotted path of this section ("" for the top level), for messages.

    Returns:
      An instance of ``cls`` (its ``__post_init__`` runs any cross-field checks).

    Raises:
      ConfigError: unknown key (the message lists the valid keys at that level) or wrong type.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    where = f"'{prefix}'" if prefix else "the top level"
    for k in data:
        if k not in names:
            full = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"unknown config key '{full}'; valid keys at {where}: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = convert(hints[name], data[name], f"{prefix}.{name}" if prefix else name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # pragma: no cover - schema bugs surface here
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def to_plain(obj: Any) -> Any:
    """Dataclasses / tuples / mappings → dicts / lists / scalars (YAML-safe)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    return obj
