"""Fixtures of the differential harness: run the selected programs two at a time.

The program files are Bytewax programs, not test modules: pytest neither
collects nor imports them (they would import ``bytewax`` and run).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.compat import _harness

collect_ignore_glob = ["programs/*"]
_NODEID = "test_compat.py::test_program["

Result = tuple[list[_harness.Step], list[_harness.Step]]


def _job(path: Path, impl: str) -> Result:
    return _harness.expected_steps(path), _harness.run_program(path, impl)


class Runner:
    """Runs every selected compat case in the background, 2 at a time, in test order."""

    def __init__(self, pool: ThreadPoolExecutor, cases: list[tuple[str, str]]) -> None:
        self._pool = pool
        self._futures: dict[tuple[str, str], Future[Result]] = {}
        for case in cases:
            self._submit(case)

    def _submit(self, case: tuple[str, str]) -> Future[Result]:
        if case not in self._futures:
            self._futures[case] = self._pool.submit(_job, _harness.PROGRAMS / case[0], case[1])
        return self._futures[case]

    def result(self, name: str, impl: str) -> Result:
        """Bytewax's and ``impl``'s steps for program ``name``."""
        return self._submit((name, impl)).result()


@pytest.fixture(scope="session")
def compat_runner(request: pytest.FixtureRequest) -> Iterator[Runner]:
    """A `Runner` started on every compat case this session selected."""
    cases = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and _NODEID in item.nodeid:
            cases.append(tuple(callspec.params["case"]))
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="compat")
    try:
        yield Runner(pool, cases)
    finally:
        # A run stopped early (-x, Ctrl-C) does not wait for the programs still queued.
        pool.shutdown(wait=True, cancel_futures=True)
