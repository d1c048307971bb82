"""Value checks for config dataclasses, declared on the fields: ranges with `bounded`, choices as `Literal` types.

A config dataclass derives from `Checked`, whose `__post_init__` runs `check_fields`, so a config built in Python is
checked like one read from JSON; the message names the field (`swcm.config.from_dict` adds the section: `train.lr`).
"""

from __future__ import annotations

import dataclasses
import operator
import typing
from typing import Any, Literal

_BOUNDS = {"gt": (operator.gt, ">"), "ge": (operator.ge, ">="), "lt": (operator.lt, "<"), "le": (operator.le, "<=")}


class ConfigError(ValueError):
    """A config file, field or override that cannot be used; the message names the file and key."""


def bounded(default: Any, **bounds: float) -> Any:
    """A dataclass field with `default` whose value (each element, for a tuple) must satisfy every bound given as
    gt / ge / lt / le."""
    unknown = set(bounds) - set(_BOUNDS)
    if unknown:
        raise TypeError(f"bounded: unknown bound {sorted(unknown)}")
    if isinstance(default, (list, dict)):
        raise TypeError("bounded: mutable defaults are not supported")
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def _describe(bounds: dict) -> str:
    return " and ".join(f"{_BOUNDS[k][1]} {v:g}" for k, v in bounds.items())


def check_fields(obj) -> None:
    """Raise ConfigError naming the first field of dataclass `obj` outside its bounds or choices."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        hint = hints[f.name]
        if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
            choices = "|".join(str(c) for c in typing.get_args(hint))
            raise ConfigError(f"{f.name}: expected one of {choices}, got {value!r}")
        bounds = f.metadata.get("bounds")
        if not bounds:
            continue
        for item in value if isinstance(value, tuple) else (value,):
            if not all(_BOUNDS[k][0](item, limit) for k, limit in bounds.items()):
                raise ConfigError(f"{f.name}: expected {'each value ' if isinstance(value, tuple) else ''}"
                                  f"{_describe(bounds)}, got {value!r}")


class Checked:
    """Base of config dataclasses: every field is checked when one is constructed."""

    def __post_init__(self):
        check_fields(self)
