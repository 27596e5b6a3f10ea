"""Run Bytewax programs unchanged: ``bytewax.*`` imports resolve to ``headrace.*``.

`install` puts a finder first on `sys.meta_path` that answers every import
of ``bytewax`` or ``bytewax.X.Y`` with the already-imported (or now imported)
module ``headrace`` / ``headrace.X.Y`` itself: the same module objects, so a
``bytewax.dataflow.Dataflow`` *is* a ``headrace.dataflow.Dataflow`` and
``isinstance`` checks hold across both names. A ``bytewax`` submodule Headrace
does not have (``bytewax._bytewax``) fails with `ModuleNotFoundError` naming
it, never by falling back to a real Bytewax.

``python -m headrace.run --bytewax mod:flow`` and the environment variable
``HEADRACE_BYTEWAX_COMPAT=1`` (which the operator sets from a `Dataflow`'s
``spec.flow.bytewaxCompat``, and which ``python -m headrace.testing`` and
``python -m headrace.visualize`` honour too) install it.

If a real Bytewax is installed, Headrace's modules still win for the run (the
flag asks for exactly that) and `install` says so in one line on stderr;
if a real ``bytewax`` module was already imported in this process, the two
can't be told apart safely and `install` refuses with `ImportError`.

>>> install(quiet=True)
>>> import bytewax.operators as bop
>>> import headrace.operators
>>> bop is headrace.operators
True
>>> from bytewax.dataflow import Dataflow
>>> isinstance(Dataflow("x"), __import__("headrace").dataflow.Dataflow)
True
>>> uninstall()
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["ENV", "enabled", "install", "installed", "uninstall"]

ENV = "HEADRACE_BYTEWAX_COMPAT"
"""Environment variable that turns the alias on (``1``, ``true`` or ``yes``)."""

_ALIAS = "bytewax"
_TARGET = "headrace"


def enabled(environ: Any = None) -> bool:
    """Whether ``HEADRACE_BYTEWAX_COMPAT`` asks for the alias.

    >>> enabled({"HEADRACE_BYTEWAX_COMPAT": "1"}), enabled({"HEADRACE_BYTEWAX_COMPAT": "0"})
    (True, False)
    >>> enabled({})
    False
    """
    env = os.environ if environ is None else environ
    return str(env.get(ENV, "")).strip().lower() in ("1", "true", "yes", "on")


def _target_name(fullname: str) -> str | None:
    if fullname == _ALIAS:
        return _TARGET
    if fullname.startswith(_ALIAS + "."):
        return _TARGET + fullname[len(_ALIAS) :]
    return None


class _AliasLoader(importlib.abc.Loader):
    """Hands out the ``headrace`` module itself for a ``bytewax`` name."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        # The import system keeps this object's own __name__, __spec__ and
        # __file__ (it only fills in missing ones) and files it under the
        # bytewax name too.
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the headrace module is already executed."""


class _BytewaxFinder(importlib.abc.MetaPathFinder):
    """Finds ``bytewax`` and ``bytewax.*`` as the ``headrace`` modules of the same path."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        name = _target_name(fullname)
        if name is None:
            return None
        try:
            found = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            found = None
        if found is None:
            msg = (
                f"No module named {fullname!r} (Headrace runs Bytewax programs by mapping "
                f"bytewax.* to headrace.*, and has no {name!r})"
            )
            raise ModuleNotFoundError(msg, name=fullname)
        return importlib.machinery.ModuleSpec(
            fullname, _AliasLoader(name), is_package=found.submodule_search_locations is not None
        )


_FINDER = _BytewaxFinder()


def installed() -> bool:
    """Whether the alias is active in this process.

    >>> installed()
    False
    """
    return _FINDER in sys.meta_path


def install(*, quiet: bool = False) -> None:
    """Make ``import bytewax...`` resolve to Headrace's modules in this process.

    Idempotent. Says in one stderr line (unless ``quiet``) when a real
    Bytewax is installed, since this run will not use it.

    >>> install(quiet=True); install(quiet=True); installed()
    True
    >>> uninstall(); installed()
    False
    """
    if installed():
        return
    loaded = sys.modules.get(_ALIAS)
    if loaded is not None and loaded is not sys.modules.get(_TARGET):
        msg = (
            f"a real bytewax is already imported ({getattr(loaded, '__file__', loaded)!r}); "
            "Headrace's Bytewax compatibility must be turned on before anything imports "
            "bytewax: run with `python -m headrace.run --bytewax ...`"
        )
        raise ImportError(msg)
    real = None if loaded is not None else _real_bytewax()
    sys.meta_path.insert(0, _FINDER)
    if real is not None and not quiet:
        print(
            f"headrace: a real bytewax is installed ({real}); with --bytewax "
            f"({ENV}=1) its imports run Headrace's modules instead",
            file=sys.stderr,
            flush=True,
        )


def uninstall() -> None:
    """Undo `install`: drop the finder and the ``bytewax`` names it filed.

    >>> uninstall(); installed()
    False
    """
    while _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    for name in [n for n in sys.modules if _target_name(n) is not None]:
        mod = sys.modules[name]
        if getattr(mod, "__name__", "").startswith(_TARGET):
            del sys.modules[name]


def _real_bytewax() -> str | None:
    """Where a real Bytewax is installed, if one is (found without importing it)."""
    try:
        spec = importlib.machinery.PathFinder.find_spec(_ALIAS)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    return locations[0] if locations else spec.origin
