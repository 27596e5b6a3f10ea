"""Every public function, class and method has a docstring with an example.

The examples themselves run as doctests (pytest --doctest-modules).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import headrace


def _public_modules() -> list[ModuleType]:
    mods = [headrace]
    for info in pkgutil.walk_packages(headrace.__path__, "headrace."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts[1:]):
            continue
        try:
            mods.append(importlib.import_module(info.name))
        except ImportError as exc:  # optional extras (e.g. confluent-kafka)
            if "confluent_kafka" in str(exc) or "fastavro" in str(exc):
                continue
            raise
    return mods


def _missing() -> list[str]:
    missing: list[str] = []
    for mod in _public_modules():
        names = getattr(mod, "__all__", None)
        if names is None:
            names = [n for n in vars(mod) if not n.startswith("_")]
        for name in names:
            obj = getattr(mod, name, None)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", "").split(".")[0] != "headrace":
                continue
            where = f"{obj.__module__}.{obj.__qualname__}"
            if ">>>" not in (inspect.getdoc(obj) or ""):
                missing.append(where)
            if inspect.isclass(obj):
                for mname, member in vars(obj).items():
                    if mname.startswith("_") or not inspect.isfunction(member):
                        continue
                    if ">>>" not in (inspect.getdoc(member) or ""):
                        missing.append(f"{where}.{mname}")
    return sorted(set(missing))


def test_public_api_has_docstring_examples() -> None:
    missing = _missing()
    if missing:
        pytest.fail("public API without a docstring example:\n  " + "\n  ".join(missing))
