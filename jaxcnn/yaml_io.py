"""Reading config YAML: ``base_config`` chains, ``key.sub=value`` overrides and memory sizes, on plain
dicts, with the one-line :class:`ConfigError`.

Used by ``jaxcnn train`` (validation into the typed config happens afterwards, in
:mod:`jaxcnn.runner.config`) and by ``jaxcnn plan --config``; it sits below both. Scalars are read
as YAML 1.1 does (PyYAML's safe loader), except that ``1e-3`` and ``2e9`` are floats as in YAML 1.2
(YAML 1.1 wants a dot).
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the valid choices."""


def check(ok: bool, message: str) -> None:
    """Raises :class:`ConfigError` ``message`` unless ``ok`` (for checks outside model validation)."""
    if not ok:
        raise ConfigError(message)


_BYTE_UNITS = {"": 1, "b": 1}
_BYTE_UNITS |= {p + "b": 10 ** (3 * i) for i, p in enumerate("kmgt", 1)}
_BYTE_UNITS |= {p + "ib": 2 ** (10 * i) for i, p in enumerate("kmgt", 1)}
_BYTE_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
BYTE_SIZE_FORMS = "a size such as 16GiB, 512MiB, 8GB, 2e9 or a number of bytes"


def parse_bytes(value: Any) -> int | float:
    """Bytes of a memory size: ``16GiB``, ``512MiB``, ``2e9``, ``8GB``, ``1.5 kib``, ``inf`` or a number.

    Binary units (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones (KB, MB, GB, TB) powers of 1000,
    case-insensitive; ``inf`` / ``infinity`` / ``none`` mean unlimited. The one parser of memory sizes
    for ``jaxcnn train`` (``model.plan_memory_bytes``) and ``jaxcnn plan`` (``--memory``).

    Returns:
      A whole number of bytes as an ``int``, or ``math.inf`` (a fractional result stays a float).

    Raises:
      ValueError: not a size with a known unit, or negative; the message starts with "must be".
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be {BYTE_SIZE_FORMS}, got {value!r}")
    if isinstance(value, str):
        if value.strip().lower() in ("inf", "infinity", "none"):
            return math.inf
        m = _BYTE_SIZE.match(value)
        if not m or m.group(2).lower() not in _BYTE_UNITS:
            raise ValueError(
                f"must be {BYTE_SIZE_FORMS} (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB; inf: unlimited), "
                f"got {value!r}"
            )
        size = float(m.group(1)) * _BYTE_UNITS[m.group(2).lower()]
    else:
        size = float(value)
    if math.isnan(size) or size < 0:
        raise ValueError(f"must be a size >= 0 such as 16GiB, got {value!r}")
    return int(size) if math.isfinite(size) and size.is_integer() else size


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` / ``2e9`` (no dot) as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """YAML text -> plain data (see the module docstring for the float rule).

    Raises:
      yaml.YAMLError: invalid YAML.
    """
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, recursively for mappings in both; neither input is changed."""
    out = copy.deepcopy(dict(base))
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml(path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Loads ``path`` merged over its ``base_config`` chain (paths relative to each file).

    Raises:
      ConfigError: missing file, invalid YAML, a non-mapping document, or a ``base_config`` cycle.
    """
    real = os.path.realpath(path)
    check(real not in _seen, f"base_config cycle: {' -> '.join([*_seen, real])}")
    check(os.path.isfile(path), f"config file not found: {path}")
    try:
        with open(path) as f:
            data = parse_yaml(f.read())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from e
    data = {} if data is None else data
    check(isinstance(data, dict), f"{path}: the top level must be a mapping, got {type(data).__name__}")
    base = data.pop("base_config", None)
    if base is None:
        return data
    check(isinstance(base, str), f"{path}: base_config must be a relative path string, got {base!r}")
    parent = load_yaml(os.path.join(os.path.dirname(path), base), (*_seen, real))
    return _deep_merge(parent, data)


def _valueless_colon_keys(value: Any) -> list[str]:
    """Keys like ``'width:0.125'`` with no value: YAML's reading of ``{width:0.125}`` (no space)."""
    found = []
    if isinstance(value, Mapping):
        found += [k for k, v in value.items() if v is None and isinstance(k, str) and ":" in k]
        value = list(value.values())
    if isinstance(value, list):
        for v in value:
            found += _valueless_colon_keys(v)
    return found


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.steps=10"`` → ``(["train", "steps"], 10)`` (the value is parsed as YAML).

    Raises:
      ConfigError: not of the form ``key.sub=value`` with non-empty identifier-like key parts, a value
        that is not valid YAML, or a flow mapping written without a space after a colon
        (``{width:0.125}``, which YAML reads as the key ``'width:0.125'`` with no value).
    """
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p and p.replace("_", "a").isalnum() for p in parts):
        raise ConfigError(
            f"bad override {text!r}: expected key.sub=value, e.g. train.steps=100 or mesh.n=-1 "
            "(keys are dotted names, the value is YAML)"
        )
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(
            f"bad override {text!r}: the value is not valid YAML: {' '.join(str(e).split())}"
        ) from e
    bad = _valueless_colon_keys(value)
    if bad:
        fixed = re.sub(r":(?=[^\s/\\])", ": ", raw.strip())
        raise ConfigError(
            f"bad override {text!r}: YAML reads {bad[0]!r} as a key without a value; put a space after "
            f"each colon: '{key.strip()}={fixed}'"
        )
    return parts, value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Applies ``key.sub=value`` overrides in order to a copy of ``data`` (``data`` is not changed).

    Raises:
      ConfigError: bad syntax, or a key path through a value that is not a mapping.
    """
    out = _deep_merge({}, data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"bad override {text!r}: {where} is {child!r}, not a section")
            node = child
        node[parts[-1]] = value
    return out
