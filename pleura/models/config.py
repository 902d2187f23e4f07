"""Reading a nested model config back: a dataclass given as itself or as the dict ``config.json`` holds."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def nested_config(cls: type[T], value: Any, where: str) -> T:
    """``value`` as a ``cls`` dataclass: itself, or built from a dict (as read back from JSON), unknown keys refused.

    Example:
        >>> from pleura.models import UNetConfig
        >>> nested_config(UNetConfig, {"width": 8}, "SegTrainConfig.model")
    """
    if isinstance(value, dict):
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(value) - set(valid))
        if unknown:
            raise ValueError(f"{where} has unknown fields {unknown}; valid: {', '.join(valid)}")
        value = cls(**value)
    if not isinstance(value, cls):
        raise ValueError(f"{where} should be a {cls.__name__} (or its dict), got {value!r}")
    return value
