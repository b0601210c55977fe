"""Results kept per object: layouts and templates are immutable but large, so
they are recognised by identity (hashing one on every sheet would cost more
than what is kept)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: At most this many objects' results are kept (then all are dropped).
MAX_OBJECTS = 256


def per_object(fn: Callable[[T], R]) -> Callable[[T], R]:
    """``fn(obj)`` computed once per object. The object is held with its
    result, so its id cannot be reused by another while the entry lives."""
    kept: dict[int, tuple[T, R]] = {}

    @functools.wraps(fn)
    def cached(obj: T) -> R:
        hit = kept.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        value = fn(obj)
        if len(kept) > MAX_OBJECTS:
            kept.clear()
        kept[id(obj)] = (obj, value)
        return value

    return cached
