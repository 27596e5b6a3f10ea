"""Shared fixtures for the core test suite: build, run and inspect small dataflows.

Helpers are handed out as fixtures (not imported) so test modules stay
independent of how pytest puts ``tests/`` on the import path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

import headrace.operators as op
from headrace.dataflow import Dataflow, Stream
from headrace.testing import TestingSink, TestingSource, run_main


def iter_causes(exc: BaseException | None) -> Iterator[BaseException]:
    """Yield ``exc`` and then each ``__cause__`` down the chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__


@pytest.fixture(autouse=True)
def _restore_headrace_logger() -> Iterator[None]:
    """Undo whatever a test (or a CLI ``main()`` it calls) did to the ``headrace`` logger."""
    import logging

    logger = logging.getLogger("headrace")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    yield
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]


@pytest.fixture
def flow() -> Dataflow:
    """A fresh, empty dataflow named ``test``."""
    return Dataflow("test")


@pytest.fixture
def cause_chain() -> Callable[[BaseException], list[BaseException]]:
    """Return ``[exc, exc.__cause__, ...]`` for an exception."""
    return lambda exc: list(iter_causes(exc))


RunOp = Callable[..., list[Any]]


@pytest.fixture
def run_op() -> RunOp:
    """Run ``items`` through ``build(stream) -> stream`` on one worker; return the output.

    ``run_op(items, build, batch_size=1, **run_main_kwargs)``.
    """

    def run(
        items: Iterable[Any],
        build: Callable[[Stream[Any]], Stream[Any]],
        batch_size: int = 1,
        **kwargs: Any,
    ) -> list[Any]:
        flow = Dataflow("test")
        out: list[Any] = []
        s = op.input("inp", flow, TestingSource(list(items), batch_size=batch_size))
        op.output("out", build(s), TestingSink(out))
        run_main(flow, **kwargs)
        return out

    return run


# Real-server fixtures shared by the suite (see tests/servers.py).
from tests.servers import redis_server  # noqa: E402, F401
