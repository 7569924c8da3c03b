"""Closed-choice config values: a schema field typed with a ``StrEnum`` fails at compose time naming the key and the
choices; ``as_choice`` gives the same check to a value that reaches code without the schema (a keyword argument, a
model built from a checkpoint's plain-dict hyper-parameters)."""
from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

E = TypeVar("E", bound=StrEnum)


def as_choice(enum: type[E], value: Any, key: str) -> E:
    """``value`` as a member of ``enum``; ``ValueError`` naming ``key`` and the choices otherwise."""
    try:
        return enum(str(value))
    except ValueError:
        raise ValueError(f"{key}={value!r} is not one of {', '.join(enum)}") from None
