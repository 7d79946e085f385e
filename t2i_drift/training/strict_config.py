"""Strict loading of a config tree of dataclasses from YAML and ``section.key=value`` overrides.

An unknown section or key, or a value of the wrong type, raises a :class:`ConfigError` that names
the file (or override) and the dotted key at fault. A section typed ``X | None`` is optional:
``null`` switches it off, and setting any of its keys switches it on with its defaults.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml


class ConfigError(ValueError):
    """A config file or override names an unknown key, has a value of the wrong type or out of range."""


def _check_value(value: Any, annotation: Any, where: str) -> Any:
    """Return ``value`` converted to ``annotation`` (int -> float only) or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {annotation}")
    if origin is Literal:
        if value is False and "no" in args:
            return "no"  # YAML 1.1 reads a bare `no` (mixed_precision: no, as Accelerate writes it) as false
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number it spells.
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {annotation}")


def _section_type(annotation: Any) -> type | None:
    """The dataclass of a (possibly optional) config section annotation, else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a)]
        return found[0] if found else None
    return None


def _is_optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _merge_into(obj: Any, values: dict[str, Any], where: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown key {dotted!r}; valid keys here: {sorted(names)}")
        section = _section_type(hints[key])
        if section is None:
            setattr(obj, key, _check_value(value, hints[key], dotted))
        elif value is None and _is_optional(hints[key]):
            setattr(obj, key, None)  # an optional section switched off
        else:
            # A section; an optional one that is off is switched on with its defaults first.
            current = getattr(obj, key)
            if current is None:
                current = section()
            _merge_into(current, value, dotted)
            setattr(obj, key, current)


# Any config tree of dataclasses (Config, or another run type's, e.g. MAEConfig).
ConfigT = TypeVar("ConfigT")


def config_from_dict(values: dict[str, Any], cls: type[ConfigT], source: str = "config") -> ConfigT:
    """Build a ``cls`` config tree from nested dicts; ``source`` names the origin in errors."""
    cfg = cls()
    try:
        _merge_into(cfg, values or {}, "")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return cfg


def apply_overrides(cfg: ConfigT, overrides: list[str]) -> ConfigT:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``0.5``, ``[1, 2]``, ``null``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        if len(keys) < 2:
            raise ConfigError(f"override {item!r} must name a section and a key, e.g. train.max_steps=10")
        try:
            value: Any = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            hint = " (quote patterns that start with * or contain ': ')" if "*" in raw or ": " in raw else ""
            reason = str(err).replace("\n", " ")
            raise ConfigError(f"override {item!r}: the value is not valid YAML{hint}: {reason}") from None
        nested: dict[str, Any] = value
        for key in reversed(keys):
            nested = {key: nested}
        try:
            _merge_into(cfg, nested, "")
        except ConfigError as err:
            raise ConfigError(f"override {item!r}: {err}") from None
    return cfg


def load_tree(
    cls: type[ConfigT],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    validate: Callable[[Any, str], None] | None = None,
) -> ConfigT:
    """Load a YAML recipe into a ``cls`` tree (None: its defaults), apply dotted overrides, then
    ``validate(cfg, source)``: the range checks types alone cannot express."""
    if path is None:
        cfg = cls()
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        cfg = config_from_dict(values or {}, cls, source=str(path))
    cfg = apply_overrides(cfg, overrides or [])
    if validate is not None:
        validate(cfg, "config" if path is None else str(path))
    return cfg


def check_ranges(cfg: Any, source: str, checks: list[tuple[str, bool, str]]) -> None:
    """Raise a ConfigError naming the first dotted key whose check failed, with its value."""
    for key, ok, message in checks:
        if not ok:
            raise ConfigError(f"{source}: {key} = {lookup(cfg, key)!r} {message}")


def lookup(cfg: Any, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def save_config(cfg: Any, path: str | Path) -> None:
    """Write any config tree of dataclasses (Config, MAEConfig) as YAML."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
