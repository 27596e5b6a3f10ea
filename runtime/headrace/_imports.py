"""Resolve an import string (``mod``, ``mod:attr``, ``mod:factory(args)``,
``path/to/flow.py:flow``) to a `Dataflow`.

With ``HEADRACE_BYTEWAX_COMPAT=1`` (or ``python -m headrace.run --bytewax``)
the module may import ``bytewax.*``: see `headrace._bytewax_alias`. Without
it, a program that imports a Bytewax that is not installed gets a hint.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from headrace.dataflow import Dataflow
from headrace.errors import ImportStringError


def _import_module(mod_str: str) -> Any:
    try:
        return _import_module_unchecked(mod_str)
    except ModuleNotFoundError as exc:
        from headrace import _bytewax_alias

        name = exc.name or ""
        if (name == "bytewax" or name.startswith("bytewax.")) and not _bytewax_alias.installed():
            msg = (
                f"{exc}; {mod_str!r} imports {name!r}, and Bytewax is not installed; Headrace runs "
                "Bytewax programs unchanged with `python -m headrace.run --bytewax ...` "
                f"(or {_bytewax_alias.ENV}=1)"
            )
            raise ImportStringError(msg, kind="ModuleNotFoundError") from exc
        raise


def _import_module_unchecked(mod_str: str) -> Any:
    if mod_str.endswith(".py") or os.sep in mod_str or "/" in mod_str:
        path = Path(mod_str)
        if not path.is_file():
            msg = f"can't import {mod_str!r}: no such file (cwd {os.getcwd()!r})"
            raise ImportStringError(msg, kind="FileNotFoundError")
        name = path.stem
        parent = str(path.resolve().parent)
        if parent not in sys.path:
            sys.path.insert(0, parent)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(mod_str)
    except ModuleNotFoundError as exc:
        if exc.name and mod_str.startswith(exc.name):
            msg = (
                f"{exc}; can't import module {mod_str!r}: check the name, the current "
                f"directory ({os.getcwd()!r}) and PYTHONPATH"
            )
            raise ImportStringError(msg, kind="ModuleNotFoundError") from exc
        raise


def locate_dataflow(import_str: str) -> Dataflow:
    """Import and return the dataflow named by ``import_str``.

    Forms: ``pkg.mod`` (attribute ``flow``), ``pkg.mod:attr``,
    ``pkg.mod:factory("arg", n=1)`` (literal arguments only) and
    ``path/to/file.py:attr``.

    >>> locate_dataflow("headrace.no_such_module:flow")
    Traceback (most recent call last):
    ...
    headrace.errors.ImportStringError: No module named 'headrace.no_such_module'; can't import ...
    """
    from headrace import _bytewax_alias

    if _bytewax_alias.enabled():
        _bytewax_alias.install()
    mod_str, _, attr_str = import_str.partition(":")
    if mod_str.endswith(".py") and not attr_str:
        attr_str = "flow"
    module = _import_module(mod_str)
    attr_str = attr_str or "flow"
    try:
        expr = ast.parse(attr_str.strip(), mode="eval").body
    except SyntaxError as exc:
        msg = f"Failed to parse {attr_str!r} as an attribute name or function call (in {import_str!r})"
        raise ImportStringError(msg, kind="SyntaxError") from exc
    if isinstance(expr, ast.Name):
        name, call = expr.id, None
    elif isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
        name, call = expr.func.id, expr
    else:
        msg = f"{attr_str!r} in {import_str!r} must be an attribute name or a call like `factory(1, 'x')`"
        raise ImportStringError(msg)
    if not hasattr(module, name):
        found = sorted(k for k, v in vars(module).items() if isinstance(v, Dataflow))
        hint = f" Dataflows in it: {found}" if found else ""
        msg = f"Failed to find attribute {name!r} in {module.__name__!r}.{hint}"
        raise ImportStringError(msg, kind="AttributeError")
    obj = getattr(module, name)
    if call is not None:
        try:
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
        except ValueError as exc:
            msg = f"Failed to parse arguments as literal values: {attr_str!r}"
            raise ImportStringError(msg) from exc
        if not callable(obj):
            msg = f"{module.__name__}:{name} is not callable; drop the parentheses"
            raise ImportStringError(msg)
        obj = obj(*args, **kwargs)
    if not isinstance(obj, Dataflow):
        msg = (
            f"A valid Bytewax dataflow was not obtained from '{module.__name__}:{attr_str}': "
            f"it is a {type(obj).__name__}; point the import string at a `Dataflow` (or a "
            "function returning one)"
        )
        raise ImportStringError(msg, kind="RuntimeError")
    return obj
