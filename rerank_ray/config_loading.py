"""Loading a config: stacked YAML files and ``dotted.key=value`` overrides, merged key by key,
then validated once by a pydantic model (``config.py``'s ``RunConfig``, ``study/config.py``'s
``StudyConfig``), with errors that name the dotted key, what was found and the keys allowed
there. Nothing here knows a field: it works for any model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A config could not be loaded; the message names the key path and the fix."""


C = TypeVar("C", bound=BaseModel)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return `base` updated by `update`, merging nested dicts key by key."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form dotted.key=value (e.g. train.epochs=2)")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key part")
    value: Any = yaml.safe_load(raw) if raw != "" else ""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def read_yaml(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top, got {type(data).__name__}")
    return data


def merge_sources(
    paths: list[Path] | tuple[Path, ...] = (), overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, read_yaml(Path(path)))
    for item in overrides:
        merged = deep_merge(merged, parse_override(item))
    return merged


def _format_errors(cls: type[BaseModel], err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<top>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(cls, e["loc"][:-1])
            msg = f"unknown key; allowed keys here: {', '.join(allowed)}"
        elif "input" in e and e["type"] not in ("value_error", "assertion_error"):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {path}: {msg}")
    return f"invalid {cls.__name__}:\n" + "\n".join(lines)


def _allowed_keys(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at `loc` (a pydantic error location) under `cls`, following fields and
    the values of ``dict[str, Model]`` fields (``students.<name>.model``); [] when unknown."""
    ann: Any = cls
    for part in loc:
        model = _model_in(ann)
        if getattr(ann, "__origin__", None) is dict:
            ann = ann.__args__[1]  # a key of a dict field: its value type
        elif model is not None and isinstance(part, str) and part in model.model_fields:
            ann = model.model_fields[part].annotation
        else:
            return []
    model = _model_in(ann)
    return sorted(model.model_fields) if model is not None else []


def _model_in(ann: Any) -> type[BaseModel] | None:
    """The pydantic model `ann` is, or the one in its union (``X | None``), else None."""
    candidates = [ann, *getattr(ann, "__args__", ())]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def validate(cls: type[C], data: dict[str, Any]) -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(cls, err)) from None
