"""Stable hashing of keys to key groups and of key groups to workers.

Never Python's salted `hash()`: every process and every run must agree.
"""

from __future__ import annotations

import zlib

DEFAULT_KEY_GROUPS = 256


def key_group(key: str, groups: int) -> int:
    """Return the key group of ``key`` (stable across processes and runs).

    >>> key_group("user-1", 256) == key_group("user-1", 256)
    True
    >>> 0 <= key_group("anything", 16) < 16
    True
    """
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % groups


def group_owner(group: int, groups: int, workers: int) -> int:
    """Return the worker owning ``group``: contiguous ranges of groups.

    Contiguous ranges keep most groups in place when the worker count
    changes by one, which makes rescales move less state.

    >>> [group_owner(g, 8, 3) for g in range(8)]
    [0, 0, 0, 1, 1, 1, 2, 2]
    """
    return group * workers // groups


def part_owner(index: int, workers: int) -> int:
    """Return the worker owning the partition at ``index`` in the sorted part list.

    >>> [part_owner(i, 2) for i in range(5)]
    [0, 1, 0, 1, 0]
    """
    return index % workers
