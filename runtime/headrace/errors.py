"""The exceptions Headrace raises, and what a step's error policy makes of a failed item.

Exceptions: messages name the step and the fix. `DeadLetter` is the record
an operator called with ``on_error="dead_letter"`` emits for an item its user
function failed on (see `headrace.operators.dead_letters`); `ErrorPolicy`
names the policies.

>>> issubclass(BytewaxRuntimeError, RuntimeError)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "BytewaxRuntimeError",
    "DeadLetter",
    "ErrorPolicy",
    "HeadraceError",
    "HeadraceRuntimeError",
    "ImportStringError",
]

ErrorPolicy = Literal["fail", "skip", "dead_letter"]
"""What a step does when its user function raises on an item.

``"fail"`` (the default) stops the run with Bytewax's error; ``"skip"``
drops the item, counts it and logs it at a bounded rate; ``"dead_letter"``
also counts it and emits a `DeadLetter` on the flow's dead-letter stream.
"""


@dataclass(frozen=True)
class DeadLetter:
    """An item a step's user function raised on, as sent to the dead-letter stream.

    ``step_id`` is the operator's full id, ``key`` the item's key for keyed
    steps (else ``None``), ``exc_type`` the exception's qualified class name,
    ``traceback`` its last frames as text, and ``epoch`` the epoch in which
    the item failed (dead letters are part of that epoch, as any output).

    >>> dl = DeadLetter("f.parse", "x", None, "ValueError", "bad", "...", 1)
    >>> dl.step_id, dl.item, dl.exc_type, dl.epoch
    ('f.parse', 'x', 'ValueError', 1)
    """

    step_id: str
    item: Any
    key: str | None
    exc_type: str
    message: str
    traceback: str
    epoch: int


class HeadraceError(Exception):
    """Base of Headrace's own exceptions.

    >>> issubclass(HeadraceRuntimeError, HeadraceError)
    True
    """


class BytewaxRuntimeError(HeadraceError, RuntimeError):
    """A failure while running a dataflow; ``__cause__`` is the original error.

    Named as in Bytewax so ``except BytewaxRuntimeError`` keeps working.

    >>> try:
    ...     raise BytewaxRuntimeError("step 'f.m' failed") from ZeroDivisionError()
    ... except RuntimeError as e:
    ...     type(e.__cause__).__name__
    'ZeroDivisionError'
    """


HeadraceRuntimeError = BytewaxRuntimeError


class ImportStringError(HeadraceError, ValueError):
    """An import string like ``mod:flow`` did not resolve to a Dataflow.

    ``kind`` names the exception Bytewax raises for the same mistake (its
    message starts with Bytewax's words); the CLI prints ``kind: message``,
    so a test that matches Bytewax's last line keeps passing.

    >>> issubclass(ImportStringError, ValueError)
    True
    >>> ImportStringError("Failed to find attribute 'x' in 'm'.", kind="AttributeError").kind
    'AttributeError'
    """

    def __init__(self, message: str, kind: str = "ValueError") -> None:
        super().__init__(message)
        self.kind = kind
