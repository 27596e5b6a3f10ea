"""Small helpers for writing operator callbacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["map_dict_value"]

K = TypeVar("K")
V = TypeVar("V")


def map_dict_value(key: K, mapper: Callable[[V], V]) -> Callable[[dict[K, V]], dict[K, V]]:
    """Build a function that replaces ``d[key]`` with ``mapper(d[key])``.

    >>> f = map_dict_value("price", lambda p: p * 2)
    >>> f({"price": 3, "sku": "x"})
    {'price': 6, 'sku': 'x'}
    """

    def shim(d: dict[K, V]) -> dict[K, V]:
        d[key] = mapper(d[key])
        return d

    return shim
