"""Step functions the word-count flows of this package share (run in ``headrace.run`` processes).

>>> count(None, "a"), count(2, "a")
((1, 1), (3, 3))
>>> slow(["x"])  # HR_SLOW unset: no pause
['x']
"""

from __future__ import annotations

import os
import time
from typing import Any


def slow(batch: list[Any]) -> list[Any]:
    """The batch, after sleeping ``HR_SLOW`` seconds (0 when unset): a run lasts long enough to kill."""
    delay = float(os.environ.get("HR_SLOW", "0"))
    if delay:
        time.sleep(delay)
    return batch


def count(state: int | None, _word: str) -> tuple[int, int]:
    """A running count for ``stateful_map``: the new count is both the state and the output."""
    n = (state or 0) + 1
    return n, n
