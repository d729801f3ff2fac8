"""Reading config YAML: ``base_config`` chains and ``key.sub=value`` overrides, on plain dicts.

Validation into the typed config happens afterwards, in :mod:`jaxcnn.runner.config`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from jaxcnn.runner.typed import ConfigError


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def load_yaml(path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Loads ``path`` merged over its ``base_config`` chain (paths relative to each file).

    Raises:
      ConfigError: missing file, invalid YAML, a non-mapping document, or a ``base_config`` cycle.
    """
    real = os.path.realpath(path)
    _check(real not in _seen, f"base_config cycle: {' -> '.join([*_seen, real])}")
    _check(os.path.isfile(path), f"config file not found: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    _check(isinstance(data, dict), f"{path}: the top level must be a mapping, got {type(data).__name__}")
    base = data.pop("base_config", None)
    if base is None:
        return data
    _check(isinstance(base, str), f"{path}: base_config must be a relative path string, got {base!r}")
    parent = load_yaml(os.path.join(os.path.dirname(path), base), (*_seen, real))
    return _deep_merge(parent, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.steps=10"`` → ``(["train", "steps"], 10)`` (the value is parsed as YAML).

    Raises:
      ConfigError: not of the form ``key.sub=value`` with non-empty identifier-like key parts.
    """
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p and p.replace("_", "a").isalnum() for p in parts):
        raise ConfigError(
            f"bad override {text!r}: expected key.sub=value, e.g. train.steps=100 or mesh.n=-1 "
            "(keys are dotted names, the value is YAML)"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"bad override {text!r}: the value is not valid YAML: {e}") from e
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Applies ``key.sub=value`` overrides in order (a copy; the input is not changed).

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
