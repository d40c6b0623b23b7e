"""Typed options: dataclasses filled once from `configs/*.yaml`, checked at the boundary."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from model.errors import ConfigError

T = TypeVar("T")


def load_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", "an existing YAML file", str(path))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("--config", f"valid YAML ({exc})", str(path)) from exc
    if not isinstance(data, dict):
        raise ConfigError("--config", "a mapping of sections at the top level", type(data).__name__, str(path))
    return data


def from_mapping(cls: type[T], data: dict[str, Any] | None, source: str) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and values of the wrong type."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(key, f"one of {sorted(fields)}", key, source)
        default = fields[key].default
        if default is not dataclasses.MISSING and default is not None:
            kind = type(default)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                data[key] = float(value)
            elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(key, f"a {kind.__name__}", value, source)
    return cls(**data)
