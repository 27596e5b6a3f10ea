"""Shared fixtures for the core test suite: build, run and inspect small dataflows.

Helpers are handed out as fixtures (not imported) so test modules stay
independent of how pytest puts ``tests/`` on the import path; the fixtures
shared with servers and stores come from `tests.support.fixtures`, and
plain helper functions are imported from `tests.support` (never from
another test module).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

import headrace.operators as op
from headrace.dataflow import Dataflow, Stream
from headrace.testing import TestingSink, TestingSource, cluster_main, run_main
from tests.support.errors import causes


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
    return causes


EntryPoint = Callable[..., None]
RunOp = Callable[..., list[Any]]


@pytest.fixture(params=[0, 1, 2], ids=["run_main", "cluster_main-1thread", "cluster_main-2thread"])
def entry_point(request: pytest.FixtureRequest) -> EntryPoint:
    """Run a dataflow on each of Bytewax's test entry points: ``entry_point(flow, **kwargs)``.

    A test taking this fixture runs three times: on ``run_main(flow, **kwargs)``
    and on ``cluster_main(flow, [], 0, worker_count_per_proc=N, **kwargs)``
    with one and with two worker threads. ``kwargs`` are those both accept
    (``epoch_interval``, ``recovery_config``). With two workers the keys are
    spread over both, so the order of outputs across keys is not defined;
    compare such outputs order-insensitively, and keep order checks per key.
    """
    threads: int = request.param

    def run(flow: Dataflow, **kwargs: Any) -> None:
        if threads:
            cluster_main(flow, [], 0, worker_count_per_proc=threads, **kwargs)
        else:
            run_main(flow, **kwargs)

    return run


@pytest.fixture
def run_op(entry_point: EntryPoint) -> RunOp:
    """Run ``items`` through ``build(stream) -> stream`` on each entry point; return the output.

    ``run_op(items, build, batch_size=1, **entry_point_kwargs)``; the input is
    one `TestingSource` partition, so stateless steps keep its order.
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
        entry_point(flow, **kwargs)
        return out

    return run


# The fixtures test modules share (servers, store locations): tests/support/fixtures.py.
pytest_plugins = ["tests.support.fixtures"]

# ------------------------------------------------------------------ tools
# The programs some tests run (redis-server, java and Kafka's jars, helm,
# prometheus, promtool) are found or provisioned once, after collection and
# before the first test, so a first run's builds count against no test's
# timeout. Tests declare them with @pytest.mark.tools(...) or get them from
# the fixtures in tests/support/_tools.FIXTURE_TOOLS. See tests/support/_tools.py.


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tools(*names): programs the test runs, provisioned before the session "
        "(names from tests/support/_tools.TOOLS)",
    )


def tools_needed(items: Iterable[pytest.Item]) -> set[str]:
    """The tools that ``items`` declare by marker or use through a fixture."""
    from tests.support._tools import FIXTURE_TOOLS

    needed: set[str] = set()
    for item in items:
        for mark in item.iter_markers("tools"):
            needed.update(mark.args)
        for fixture in getattr(item, "fixturenames", ()):
            needed.update(FIXTURE_TOOLS.get(fixture, ()))
    return needed


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    needed = tools_needed(session.items)
    if not needed:
        return
    from tests.support import _tools

    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    capture = session.config.pluginmanager.get_plugin("capturemanager")

    def report(text: str, end: bool) -> None:
        if terminal is None or capture is None:
            _tools._stderr(text, end)
            return
        with capture.global_and_fixture_disabled():
            if not end:
                terminal.ensure_newline()
            terminal.write(text + ("\n" if end else ""), flush=True)

    _tools.set_reporter(report)
    try:
        # A tool that fails here fails the tests that need it, with its install command.
        _tools.provision(needed)
    finally:
        _tools.set_reporter(_tools._stderr)


# ------------------------------------------------------------------ markers
# Tests are marked here, from what they use, so a new test gets its markers
# without thinking (the markers are registered in pyproject.toml):
#
# * ``redis``: uses the ``redis_server`` fixture (a real redis-server). In the
#   fast tier: redis is the one server the fast tier needs.
# * ``kafka``: uses the ``kafka_broker`` fixture or Kafka's tools; also ``slow``.
# * ``helm`` / ``prometheus``: runs helm, or prometheus/promtool (declared with
#   ``@pytest.mark.tools``); also ``slow`` (a fresh machine builds them with Go).
# * ``slow``: the above, and every test of a module in `SLOW_MODULES` (they start
#   clusters of processes, kill them, and take seconds each). A slow test in
#   another module gets ``@pytest.mark.slow`` on itself.
#
# ``python -m pytest -m "not slow"`` is the one-minute loop; CI runs everything.

FIXTURE_MARKS: dict[str, tuple[str, ...]] = {
    "redis_server": ("redis",),
    "kafka_broker": ("kafka", "slow"),
}
TOOL_MARKS: dict[str, tuple[str, ...]] = {
    "java": ("kafka", "slow"),
    "kafka-jars": ("kafka", "slow"),
    "helm": ("helm", "slow"),
    "prometheus": ("prometheus", "slow"),
    "promtool": ("prometheus", "slow"),
}
SLOW_MODULES: frozenset[str] = frozenset(
    {
        "tests/engine/test_cluster.py",  # clusters of processes over TCP, kill -9, SIGTERM
        "tests/engine/test_recovery.py",  # kill -9 and restart, rescale across restarts
        "tests/engine/test_fencing.py",  # a restart while the old workers still run
        "tests/engine/test_integrity.py",  # state deleted under real runs
        "tests/compat/test_compat.py",  # every Bytewax program run as a process
        "tests/api/test_bytewax_alias.py",  # Bytewax programs run through the CLI
        "tests/windowing/test_semantics.py",  # property tests on every entry point
    }
)
"""Test modules (paths from the repository root) whose every test is slow."""


def markers_for(item: pytest.Item) -> set[str]:
    """The markers `pytest_collection_modifyitems` adds to ``item``, from what it uses.

    >>> class Item:  # the parts of a pytest.Item this reads
    ...     fixturenames = ["tmp_path", "kafka_broker"]
    ...     nodeid = "tests/connectors/test_kafka.py::test_x"
    ...     def iter_markers(self, name): return iter(())
    >>> sorted(markers_for(Item()))
    ['kafka', 'slow']
    """
    names: set[str] = set()
    for fixture in getattr(item, "fixturenames", ()):
        names.update(FIXTURE_MARKS.get(fixture, ()))
    for mark in item.iter_markers("tools"):
        for tool in mark.args:
            names.update(TOOL_MARKS.get(tool, ()))
    if item.nodeid.split("::", 1)[0] in SLOW_MODULES:
        names.add("slow")
    return names


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst: the markers must be on the items before `-m` selects by them.
    for item in items:
        for name in sorted(markers_for(item) - {m.name for m in item.iter_markers()}):
            item.add_marker(name)
