"""YAML/dict ↔ frozen dataclasses, with errors that name the field and the allowed values.

Shared by the method's config (`textcraftor.config`) and the study's (`study.config`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is wrong; the message names the field (dotted path) and what is allowed.

    ``relative``: the path is relative to the config root being validated (raised by a
    ``__post_init__`` check, e.g. ``sample.eta`` of a run config); ``from_dict`` prefixes it
    with where that root sits (``base.sample.eta`` inside a study)."""

    def __init__(self, message: str, *, relative: bool = False):
        super().__init__(message)
        self.relative = relative


def require(condition: bool, field: str, message: str) -> None:
    """Raise ``ConfigError("field: message")`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}", relative=True)


def require_choice(value: Any, field: str, allowed: Sequence[Any]) -> None:
    require(value in allowed, field, f"{value!r} is not one of {', '.join(map(repr, allowed))}")


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from plain data, checking keys and types recursively.

    A class with ``config_root = True`` (a run config) names its fields relative to itself in
    its checks; nested at ``path`` (a study's ``base``), its errors get ``path.`` in front."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        fields = ", ".join(f.name for f in dataclasses.fields(cls) if f.init)
        raise ConfigError(f"{path or '<root>'}: expected a mapping with fields {fields}, got "
                          f"{type(data).__name__} {data!r}")
    try:
        return _build(cls, data, path)
    except ConfigError as error:
        if path and error.relative and getattr(cls, "config_root", False):
            raise ConfigError(f"{path}.{error}") from None
        raise


def _build(cls: type[T], data: Mapping[str, Any], path: str) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(where + str(k) for k in unknown)}; "
            f"allowed under {path or 'the top level'}: {', '.join(fields)}"
        )
    missing = [name for name, f in fields.items() if name not in data
                and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        where = f"{path}." if path else ""
        raise ConfigError(f"{', '.join(where + m for m in missing)}: required, not given")
    hints = typing.get_type_hints(cls)
    values = {
        name: _convert(hints[name], value, f"{path}.{name}" if path else name)
        for name, value in data.items()
    }
    return cls(**values)


def _convert(annotation: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} fits none of "
                          f"{' | '.join(_type_name(a) for a in args)}")
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, path)
    if origin is typing.Literal:
        require_choice(value, path, args)
        return value
    if origin in (tuple, Sequence) or annotation is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        return tuple(_convert(item_type, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        key_type, value_type = args if args else (Any, Any)
        return types.MappingProxyType(
            {_convert(key_type, k, path): _convert(value_type, v, f"{path}.{k}")
             for k, v in value.items()}
        )
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-6" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .nan / .inf, or "nan" given as text
            raise ConfigError(f"{path}: expected a finite number, got {value}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation in (str, bool):
        if not isinstance(value, annotation):
            hint = ""
            if annotation is str and isinstance(value, bool):  # YAML 1.1: no/off/yes/on
                hint = (" (YAML reads an unquoted no, off, yes or on as a boolean: quote the "
                        "word, e.g. 'no')")
            raise ConfigError(f"{path}: expected {annotation.__name__}, got {value!r}{hint}")
        return value
    raise TypeError(f"{path}: unsupported annotation {annotation!r}")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation))


def to_dict(config: Any) -> Any:
    """Plain JSON-able data (mappings, lists, scalars) from a config dataclass."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str],
                    schema: type | None = None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to nested plain data.

    Without ``schema`` a key is split at every dot. With ``schema`` (the dataclass the data
    describes, e.g. ``RunConfig``) the key walks the dataclass fields, and a mapping field takes
    the rest of the key as one name, so names with dots work: ``reward.weights.hpsv2.1=0.5``
    sets the weight of ``hpsv2.1``. In a mapping of dataclasses (``reward.sources``,
    ``search``) a last segment that names a field of the dataclass is that field
    (``reward.sources.hpsv2.1.source=/x.pt``); otherwise the rest is the name.

    ``a.b.NAME=v`` sets one entry of mapping ``a.b`` and keeps the others; a mapping that the
    data lacks starts from the dataclass default. ``a.b={...}`` replaces the whole mapping.

    Raises ConfigError for an item without ``=`` or a path through a value that is not a
    section.
    """
    result = json.loads(json.dumps(dict(data)))  # deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.steps=100")
        value = yaml.safe_load(raw) if raw else ""
        _assign(result, key.split("."), value, schema, item)
    return result


def set_path(data: Mapping[str, Any], path: str, value: Any, schema: type) -> dict[str, Any]:
    """A deep copy of plain ``data`` with ``value`` (a Python value, not YAML text) at dotted
    ``path``, walked like an override through ``schema`` (``reward.weights.hpsv2.1``)."""
    result = json.loads(json.dumps(dict(data)))
    _assign(result, path.split("."), value, schema, f"{path}={value!r}")
    return result


def path_annotation(schema: type, path: str) -> Any:
    """The type annotation of the field at dotted ``path`` of dataclass ``schema`` (a mapping's
    value type for ``reward.weights.<name>``). Raises ConfigError for a path that is not a
    field, or that ends at a section rather than a value."""
    parts, node = path.split("."), schema
    while True:
        name, rest, child, _ = _next_step(parts, node)
        if child is None:
            raise ConfigError(f"{path}: no such field")
        if not rest:
            if dataclasses.is_dataclass(child) or (_mapping_args(child) is not None
                                                    and dataclasses.is_dataclass(node)):
                raise ConfigError(f"{path}: a section, not a value")
            return child
        parts, node = rest, child


def get_path(data: Mapping[str, Any], path: str, schema: type) -> Any:
    """The value at dotted ``path`` of plain ``data`` (walked through ``schema``, like
    ``set_path``). Raises KeyError naming the path when ``data`` does not hold it."""
    parts, node, kind = path.split("."), data, schema
    while True:
        name, rest, kind, _ = _next_step(parts, kind)
        if not isinstance(node, Mapping) or name not in node:
            raise KeyError(path)
        node = node[name]
        if not rest:
            return node
        parts = rest


def leaf_paths(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every dotted path to a value in plain nested ``data``."""
    paths = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        paths += leaf_paths(value, name + ".") if isinstance(value, Mapping) and value else [name]
    return paths


def _assign(node: dict[str, Any], parts: list[str], value: Any, schema: Any, item: str) -> None:
    """Set ``value`` at ``parts`` below ``node``, whose type is ``schema`` (None: no schema)."""
    walked: list[str] = []
    while True:
        name, rest, child_type, default = _next_step(parts, schema)
        if not rest:
            node[name] = value
            return
        walked.append(name)
        child = node.get(name)
        if child is None:
            child = node[name] = default()
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(walked)} is not a section")
        node, parts, schema = child, rest, child_type


def _next_step(parts: list[str], schema: Any):
    """(name in the current mapping, the parts left, the child's type, its default data)."""
    schema = _without_none(schema)
    empty = dict
    if dataclasses.is_dataclass(schema):
        fields = {f.name: f for f in dataclasses.fields(schema)}
        name, field = parts[0], fields.get(parts[0])
        if field is None:  # unknown: kept as given, from_dict names it with the allowed keys
            return name, parts[1:], None, empty
        child_type = _without_none(typing.get_type_hints(schema)[name])
        if _mapping_args(child_type) is not None:  # an absent mapping starts from the default
            return name, parts[1:], child_type, lambda: _default_data(field)
        return name, parts[1:], child_type, empty
    args = _mapping_args(schema)
    if args is not None:
        item_type = _without_none(args[1])
        if dataclasses.is_dataclass(item_type) and len(parts) >= 2 and parts[-1] in {
                f.name for f in dataclasses.fields(item_type)}:
            return ".".join(parts[:-1]), parts[-1:], item_type, empty
        return ".".join(parts), [], item_type, empty
    return parts[0], parts[1:], None, empty


def _without_none(annotation: Any) -> Any:
    """``X`` for ``X | None``; anything else unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return annotation


def _mapping_args(annotation: Any) -> tuple[Any, Any] | None:
    """(key type, value type) of a ``Mapping``/``dict`` annotation; None for anything else."""
    if typing.get_origin(annotation) in (dict, Mapping) or annotation is dict:
        return typing.get_args(annotation) or (Any, Any)
    return None


def _default_data(field: dataclasses.Field) -> dict[str, Any]:
    """The field's default as plain data; ``{}`` when it has none or it is not a mapping."""
    if field.default_factory is not dataclasses.MISSING:
        data = to_dict(field.default_factory())
    else:
        data = None if field.default is dataclasses.MISSING else to_dict(field.default)
    return data if isinstance(data, dict) else {}


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def config_changes(old: Any, new: Any, path: str = "") -> dict[str, tuple[Any, Any]]:
    """Every leaf that differs between two plain configs (``to_dict`` output or parsed JSON), by
    dotted path: ``{"train.lr": (1e-4, 1e-6), ...}``. A key present on one side only counts as
    a change with ``None`` on the other; lists and tuples compare as lists."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        changes: dict[str, tuple[Any, Any]] = {}
        for key in [*old, *(k for k in new if k not in old)]:
            where = f"{path}.{key}" if path else str(key)
            changes.update(config_changes(old.get(key), new.get(key), where))
        return changes
    as_list = (list, tuple)
    if isinstance(old, as_list) and isinstance(new, as_list):
        old, new = list(old), list(new)
    return {} if old == new else {path or "<root>": (old, new)}
