"""The exceptions Headrace raises; messages name the step and the fix.

>>> issubclass(BytewaxRuntimeError, RuntimeError)
True
"""

from __future__ import annotations

__all__ = ["BytewaxRuntimeError", "HeadraceError", "HeadraceRuntimeError", "ImportStringError"]


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
