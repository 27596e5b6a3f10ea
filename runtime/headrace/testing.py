"""Helpers for testing dataflows: in-memory sources and sinks, runners.

``python -m headrace.testing mod:flow -w 2 -p 2`` runs a dataflow as a local
test cluster, as ``python -m bytewax.testing`` does (see `main`).

>>> import headrace.operators as op
>>> from headrace.dataflow import Dataflow
>>> flow = Dataflow("t")
>>> out = []
>>> op.output("out", op.input("inp", flow, TestingSource([1, 2])), TestingSink(out))
>>> run_main(flow)
>>> out
[1, 2]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from headrace.dataflow import Dataflow
from headrace.inputs import (
    AbortExecution,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from headrace.outputs import DynamicSink, StatelessSinkPartition

__all__ = [
    "TestingSink",
    "TestingSource",
    "TimeTestingGetter",
    "cluster_main",
    "ffwd_iter",
    "main",
    "poll_next_batch",
    "run_main",
]

X = TypeVar("X")


def ffwd_iter(it: Iterator[Any], n: int) -> None:
    """Advance an iterator ``n`` items, discarding them.

    >>> it = iter(range(5)); ffwd_iter(it, 3); next(it)
    3
    """
    next(itertools.islice(it, n, n), None)


class _IterSourcePartition(StatefulSourcePartition[X, int]):
    def __init__(self, ib: Iterable[Any], batch_size: int, resume_state: int | None) -> None:
        self._start = resume_state or 0
        self._batch_size = batch_size
        self._it = iter(ib)
        self._idx = self._start
        self._awake: datetime | None = None
        ffwd_iter(self._it, self._start)
        self._eof = False
        # An ABORT reached with items before it in the batch: the batch is
        # returned first and the abort raised by the next call, as in Bytewax.
        self._abort: TestingSource.ABORT | None = None

    def next_batch(self) -> list[X]:
        if self._eof:
            raise StopIteration()
        if self._abort is not None:
            self._abort._triggered = True
            raise AbortExecution()
        batch: list[X] = []
        self._awake = None
        while len(batch) < self._batch_size:
            try:
                item = next(self._it)
            except StopIteration:
                if batch:
                    self._eof = True
                    return batch
                raise
            if isinstance(item, TestingSource.ABORT) and not item._triggered:
                # Not counted yet: a snapshot taken now resumes at the ABORT,
                # which a rerun with the same (triggered) sentinel passes over.
                self._abort = item
                return batch
            self._idx += 1
            if isinstance(item, TestingSource.EOF):
                self._eof = True
                return batch
            if isinstance(item, TestingSource.ABORT):
                continue
            if isinstance(item, TestingSource.PAUSE):
                self._awake = datetime.now(UTC) + item.for_duration
                return batch
            batch.append(item)
        return batch

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._idx


class TestingSource(FixedPartitionedSource[X, int]):
    """Produce the items of an iterable; a single partition named ``iterable``.

    The iterable may contain sentinels: ``TestingSource.EOF()`` ends the
    input there (a resumed run continues after it), ``TestingSource.ABORT()``
    crashes the run the first time it is reached, ``TestingSource.PAUSE(td)``
    waits before continuing.

    >>> part = TestingSource([1, 2, 3], batch_size=2).build_part("s", "iterable", None)
    >>> part.next_batch(), part.next_batch()
    ([1, 2], [3])
    """

    __test__ = False  # not a pytest class

    @dataclass
    class EOF:
        """Sentinel: end the input here, as if the source were exhausted.

        >>> isinstance(TestingSource.EOF(), TestingSource.EOF)
        True
        """

    @dataclass
    class ABORT:
        """Sentinel: abort the run once, as a crash would.

        >>> TestingSource.ABORT()._triggered
        False
        """

        _triggered: bool = False

    @dataclass
    class PAUSE:
        """Sentinel: pause the input for ``for_duration``.

        >>> TestingSource.PAUSE(timedelta(seconds=1)).for_duration.total_seconds()
        1.0
        """

        for_duration: timedelta

    def __init__(self, ib: Iterable[Any], batch_size: int = 1) -> None:
        if batch_size < 1:
            msg = f"TestingSource batch_size must be >= 1; got {batch_size}"
            raise ValueError(msg)
        self._ib = ib
        self._batch_size = batch_size

    def list_parts(self) -> list[str]:
        """The single partition ``["iterable"]``.

        >>> TestingSource([]).list_parts()
        ['iterable']
        """
        return ["iterable"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _IterSourcePartition[X]:
        """Build the partition, skipping ``resume_state`` items.

        >>> TestingSource("abc").build_part("s", "iterable", 2).next_batch()
        ['c']
        """
        return _IterSourcePartition(self._ib, self._batch_size, resume_state)


class _ListSinkPartition(StatelessSinkPartition[X]):
    def __init__(self, ls: list[X]) -> None:
        self._ls = ls

    def write_batch(self, items: list[X]) -> None:
        self._ls.extend(items)


class TestingSink(DynamicSink[X]):
    """Append every item to a list (shared by the workers of a process).

    >>> out = []
    >>> TestingSink(out).build("s", 0, 1).write_batch([1]); out
    [1]
    """

    __test__ = False

    def __init__(self, ls: list[X]) -> None:
        self._ls = ls

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ListSinkPartition[X]:
        """Build this worker's partition, which appends to the shared list.

        >>> out = []
        >>> part = TestingSink(out).build("s", 1, 2); part.write_batch(["x"]); out
        ['x']
        """
        return _ListSinkPartition(self._ls)


class _DiscardPartition(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        return None


class _DiscardSink(DynamicSink[Any]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DiscardPartition:
        return _DiscardPartition()


def poll_next_batch(
    part: StatefulSourcePartition[X, Any] | StatelessSourcePartition[X],
    timeout: timedelta = timedelta(seconds=5),
) -> list[X]:
    """Call ``part.next_batch()`` until it returns items or ``timeout`` passes.

    >>> poll_next_batch(TestingSource([1]).build_part("s", "iterable", None))
    [1]
    """
    import time

    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        batch = list(part.next_batch())
        if batch:
            return batch
        if time.monotonic() >= deadline:
            msg = f"no items within {timeout}"
            raise TimeoutError(msg)
        time.sleep(0.001)


@dataclass
class TimeTestingGetter:
    """A controllable clock for tests: pass ``getter.get`` as a ``now_getter``.

    >>> from datetime import datetime, timedelta, timezone
    >>> clock = TimeTestingGetter(datetime(2024, 1, 1, tzinfo=timezone.utc))
    >>> clock.advance(timedelta(seconds=5)); clock.get().second
    5
    """

    now: datetime

    def advance(self, td: timedelta) -> None:
        """Move the clock forward by ``td``.

        >>> from datetime import datetime, timedelta, timezone
        >>> c = TimeTestingGetter(datetime(2024, 1, 1, tzinfo=timezone.utc))
        >>> c.advance(timedelta(minutes=1)); c.now.minute
        1
        """
        self.now += td

    def get(self) -> datetime:
        """Return the current fake time.

        >>> from datetime import datetime, timezone
        >>> TimeTestingGetter(datetime(2024, 1, 1, tzinfo=timezone.utc)).get().year
        2024
        """
        return self.now


def run_main(
    flow: Dataflow,
    *,
    epoch_interval: timedelta | None = None,
    recovery_config: Any = None,
) -> None:
    """Run ``flow`` on one worker in this thread; return when input ends.

    >>> import headrace.operators as op
    >>> flow = Dataflow("rm"); out = []
    >>> op.output("o", op.map("m", op.input("i", flow, TestingSource([1])), str), TestingSink(out))
    >>> run_main(flow); out
    ['1']
    """
    from headrace._engine import execute

    execute(flow, workers_per_process=1, epoch_interval=epoch_interval, recovery=recovery_config)


def cluster_main(
    flow: Dataflow,
    addresses: list[str],
    proc_id: int,
    *,
    epoch_interval: timedelta | None = None,
    recovery_config: Any = None,
    worker_count_per_proc: int = 1,
) -> None:
    """Run this process's share of a cluster: ``worker_count_per_proc`` threads.

    ``addresses`` lists every process's ``host:port``; ``proc_id`` is this
    process's index in it.

    >>> import headrace.operators as op
    >>> flow = Dataflow("cm"); out = []
    >>> op.output("o", op.input("i", flow, TestingSource([1, 2])), TestingSink(out))
    >>> cluster_main(flow, [], 0, worker_count_per_proc=2); sorted(out)
    [1, 2]
    """
    from headrace._engine import execute

    if len(addresses) > 1:
        from headrace._engine import execute_cluster

        execute_cluster(
            flow,
            addresses=addresses,
            proc_id=proc_id,
            workers_per_process=worker_count_per_proc,
            epoch_interval=epoch_interval,
            recovery=recovery_config,
        )
        return
    execute(
        flow,
        workers_per_process=worker_count_per_proc,
        epoch_interval=epoch_interval,
        recovery=recovery_config,
    )


def _parser() -> argparse.ArgumentParser:
    from headrace.run import _count, _env, _flag, _location, _nonneg_int, _seconds

    def seconds(text: str) -> str:
        _seconds(text)  # 0 or more, else a usage error naming the option
        return text

    p = argparse.ArgumentParser(
        prog="python -m headrace.testing",
        description="Run a Headrace dataflow as a local test cluster.",
        epilog="Options also come from HEADRACE_* (or BYTEWAX_*) environment variables, e.g. "
        "HEADRACE_WORKERS_PER_PROCESS. For every option of a real deployment, use "
        "`python -m headrace.run`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "import_str", help="dataflow to run: 'mod', 'mod:attr', 'mod:factory(1)', or 'path/to/file.py:attr'"
    )
    p.add_argument(
        "-s",
        "--snapshot-interval",
        type=seconds,
        default=_env("SNAPSHOT_INTERVAL"),
        help="seconds between snapshots for recovery (the epoch length)",
    )
    r = p.add_argument_group("recovery")
    r.add_argument(
        "-r",
        "--recovery-directory",
        type=_location,
        default=_env("RECOVERY_DIRECTORY"),
        help="recovery store: a local directory or a redis:// URL",
    )
    r.add_argument(
        "-b",
        "--backup-interval",
        type=seconds,
        default=_env("BACKUP_INTERVAL"),
        help="seconds of snapshot history kept before compaction",
    )
    r.add_argument(
        "--allow-dropped-state",
        action="store_true",
        default=_flag(_env("ALLOW_DROPPED_STATE")),
        help="drop stored state of steps the dataflow no longer has, instead of refusing to resume",
    )
    r.add_argument(
        "--allow-evicting-redis",
        action="store_true",
        default=_flag(_env("ALLOW_EVICTING_REDIS")),
        help="accept a Redis whose maxmemory-policy may evict recovery state",
    )
    r.add_argument(
        "--expect-epoch",
        type=_nonneg_int,
        default=_env("EXPECT_EPOCH", "0"),
        metavar="N",
        help="the store must hold committed epoch N or a later one, else the run stops",
    )
    g = p.add_argument_group(
        "scaling", "'-p' starts that many local processes, '-w' runs that many workers in each."
    )
    g.add_argument(
        "-w",
        "--workers-per-process",
        type=_count,
        default=_env("WORKERS_PER_PROCESS", "1"),
        help="worker threads per process",
    )
    g.add_argument(
        "-p", "--processes", type=_count, default=_env("PROCESSES", "1"), help="number of local processes"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m headrace.testing IMPORT_STR [-w W] [-p P] [-r DIR] [-s S] [-b S]``.

    Runs the dataflow as a local cluster of ``P`` processes of ``W`` workers
    each, on 127.0.0.1, with Bytewax's arguments, and returns the exit code:
    0, or 1 when the run (or any of its processes) failed, as Bytewax's
    test entry point does; why is printed to standard error. No metrics
    server is started unless ``HEADRACE_METRICS_PORT`` asks for one.

    >>> import contextlib, io
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     main(["headrace.no_such_module:flow", "-w", "2"])
    1
    >>> "headrace.no_such_module" in err.getvalue()
    True
    """
    from headrace.run import _env
    from headrace.run import main as run_main_cli

    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    run_argv = [
        args.import_str,
        "-w",
        str(args.workers_per_process),
        "-p",
        str(args.processes),
        "--metrics-port",
        str(_env("METRICS_PORT", "0")),
    ]
    if args.recovery_directory:
        run_argv += ["-r", args.recovery_directory]
    if args.snapshot_interval is not None:
        run_argv += ["-s", args.snapshot_interval]
    if args.backup_interval is not None:
        run_argv += ["-b", args.backup_interval]
    for flag in ("allow_dropped_state", "allow_evicting_redis"):
        if getattr(args, flag):
            run_argv.append("--" + flag.replace("_", "-"))
    if args.expect_epoch:
        run_argv += ["--expect-epoch", str(args.expect_epoch)]
    return 0 if run_main_cli(run_argv) == 0 else 1


if __name__ == "__main__":
    from headrace.testing import main as _main  # the module's own copy, not __main__'s

    sys.exit(_main())
