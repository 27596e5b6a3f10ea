"""An exception's cause chain, for tests that check what a user is told.

>>> try:
...     try:
...         raise KeyError("k")
...     except KeyError as e:
...         raise ValueError("bad") from e
... except ValueError as exc:
...     print(causes_text(exc))
...     print([type(e).__name__ for e in causes(exc)])
ValueError: bad
KeyError: 'k'
['ValueError', 'KeyError']
"""

from __future__ import annotations


def causes(exc: BaseException | None) -> list[BaseException]:
    """``[exc, exc.__cause__, ...]`` (empty for None), stopping before any exception seen already."""
    out: list[BaseException] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        exc = exc.__cause__
    return out


def causes_text(exc: BaseException | None) -> str:
    """``Type: message`` of each exception down the chain, one a line."""
    return "\n".join(f"{type(e).__name__}: {e}" for e in causes(exc))
