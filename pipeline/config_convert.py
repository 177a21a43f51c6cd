"""Building frozen dataclass trees from plain (YAML) data, collecting every problem.

Used by `pipeline.config`; kept apart so that module holds only the configuration itself.
A value that fails conversion is recorded as a problem and the field keeps its default, so
one pass reports every mistake.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class _Invalid:
    """Marks a value that failed conversion; the field keeps its default so that range
    checks still run on a sane tree and every problem is reported in one pass."""


_INVALID: Any = _Invalid()


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            problems.append(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
            return _INVALID
        return build_dataclass(tp, value, key, problems)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key, problems)
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            problems.append(f"{key}: must be one of {choices}, got {value!r}")
            return _INVALID
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            value = [value]
        (item_tp, _) = get_args(tp)
        items = tuple(_convert(v, item_tp, f"{key}[{i}]", problems) for i, v in enumerate(value))
        return _INVALID if any(i is _INVALID for i in items) else items
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(value, Mapping):
            problems.append(f"{key}: expected a mapping, got {value!r}")
            return _INVALID
        return {str(k): str(v) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key}: expected true or false, got {value!r}")
        return _INVALID
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{key}: expected an integer, got {value!r}")
        return _INVALID
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` as a string
            try:
                return float(value)
            except ValueError:
                pass
        problems.append(f"{key}: expected a number, got {value!r}")
        return _INVALID
    if tp is str:
        if isinstance(value, str):
            return value
        problems.append(f"{key}: expected a string, got {value!r}")
        return _INVALID
    problems.append(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover
    return value


def build_dataclass(cls: type[T], data: Mapping[str, Any], prefix: str, problems: list[str]) -> T:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key)
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{dotted}: unknown key{hint}")
            continue
        converted = _convert(value, hints[key], dotted, problems)
        if converted is not _INVALID:
            kwargs[key] = converted
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    """Parse an override value the way YAML would (`3`, `0.5`, `true`, `[a, b]`, `null`)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> list[str]:
    """Apply `a.b.c=value` overrides to a nested dict in place; returns syntax problems."""
    problems: list[str] = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"--set {item}: expected KEY=VALUE")
            continue
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"{key}: '{part}' is not a section")
                break
            node = child
        else:
            node[parts[-1]] = _parse_scalar(raw)
    return problems


def deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}
