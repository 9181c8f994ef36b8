"""Frozen dataclass configs from their JSON form, for self-describing checkpoints."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def from_json_dict(cls: type[T], values: dict[str, Any], what: str) -> T:
    """`cls(**values)` with JSON's lists turned back into tuples; unknown keys raise TypeError
    naming them ("unknown {what} config fields: ...")."""
    assert dataclasses.is_dataclass(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise TypeError(f"unknown {what} config fields: {', '.join(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
