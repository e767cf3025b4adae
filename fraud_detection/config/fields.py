"""Config dataclasses as flat parameters: the bridge to flags, MLproject and MLflow params.

Each leaf field of a config dataclass is one user-facing parameter (``n_customers``); nested
dataclasses only group fields. ``flatten`` and ``build_config`` go both ways, converting the
strings MLflow stores parameters as back to the field types.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from fraud_detection.config import ConfigError

C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One user-facing parameter: its name, type, default and help text."""

    name: str
    type: type
    default: Any
    help: str


def leaves(config_type: type) -> Iterator[Leaf]:
    """Yield the leaf parameters of a config dataclass, depth first, in declaration order."""
    hints = typing.get_type_hints(config_type)
    for item in dataclasses.fields(config_type):
        field_type = hints[item.name]
        if dataclasses.is_dataclass(field_type):
            yield from leaves(field_type)
        else:
            default = item.default
            if default is dataclasses.MISSING:
                raise TypeError(f"{config_type.__name__}.{item.name} needs a default")
            yield Leaf(item.name, field_type, default, item.metadata.get("help", ""))


def build_config(config_type: type[C], values: Mapping[str, Any]) -> C:
    """Build ``config_type`` from flat ``{leaf name: value}``; missing leaves keep defaults.

    String values (as MLflow stores parameters) are converted to the field's type.
    """
    hints = typing.get_type_hints(config_type)
    kwargs: dict[str, Any] = {}
    for item in dataclasses.fields(config_type):
        field_type = hints[item.name]
        if dataclasses.is_dataclass(field_type):
            kwargs[item.name] = build_config(field_type, values)
        elif item.name in values:
            kwargs[item.name] = _convert(item.name, field_type, values[item.name])
    return config_type(**kwargs)


def flatten(config: Any) -> dict[str, Any]:
    """Return ``{leaf name: value}`` for a config instance (the inverse of ``build_config``)."""
    flat: dict[str, Any] = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            flat.update(flatten(value))
        else:
            flat[item.name] = value
    return flat


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def _convert(name: str, field_type: type, value: Any) -> Any:
    if isinstance(value, field_type) and not (field_type is int and isinstance(value, bool)):
        return value
    text = str(value).strip()
    if field_type is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    try:
        if field_type is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if field_type is float:
            return float(text)
    except ValueError as error:
        raise ConfigError(f"{name} must be {field_type.__name__}, got {value!r}") from error
    return str(value)
