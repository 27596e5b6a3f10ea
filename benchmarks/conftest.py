"""Let pytest run the benchmark harness's doctests on Headrace.

    python -m pytest benchmarks --import-mode=importlib

(``importlib`` mode because ``benchmarks/profile.py`` shares its name with a
standard library module.) The pipeline modules import ``_compat`` and
friends as top-level modules, so their folder goes on ``sys.path``; window
pipelines are skipped until ``headrace.operators.windowing`` exists.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

PIPELINES_DIR = Path(__file__).resolve().parent / "pipelines"
os.environ["BENCH_ENGINE"] = "headrace"
if str(PIPELINES_DIR) not in sys.path:
    sys.path.insert(0, str(PIPELINES_DIR))

_WINDOW_MODULES = {"_windows.py", "tumbling_fold.py", "sliding.py", "session.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the window pipelines' doctests while Headrace has no windowing."""
    import _compat

    if _compat.win is not None:
        return
    skip = pytest.mark.skip(reason="headrace.operators.windowing does not import yet")
    for item in items:
        if item.path.name in _WINDOW_MODULES and item.path.parent == PIPELINES_DIR:
            item.add_marker(skip)
