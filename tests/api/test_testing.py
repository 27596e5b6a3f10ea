"""`headrace.testing`: TestingSource sentinels and batching, sinks, runners, helpers.

Expected values were checked against Bytewax 0.21.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import headrace.operators as op
from headrace.dataflow import Dataflow
from headrace.inputs import AbortExecution, StatelessSourcePartition
from headrace.testing import (
    TestingSink,
    TestingSource,
    TimeTestingGetter,
    cluster_main,
    ffwd_iter,
    poll_next_batch,
    run_main,
)

pytestmark = pytest.mark.timeout(30)


def _batches(items: list[Any], batch_size: int = 1, **kwargs: Any) -> list[list[Any]]:
    """Run ``items`` and return the batches as the first step saw them."""
    flow = Dataflow("test")
    out: list[list[Any]] = []
    s = op.input("inp", flow, TestingSource(items, batch_size=batch_size))
    op.output("out", op.flat_map_batch("batches", s, lambda xs: [list(xs)]), TestingSink(out))
    run_main(flow, **kwargs)
    return out


# --- TestingSource --------------------------------------------------------------------


def test_batch_size() -> None:
    assert _batches(list(range(5)), batch_size=2) == [[0, 1], [2, 3], [4]]
    assert _batches(list(range(3))) == [[0], [1], [2]]
    assert _batches([], batch_size=3) == []


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        TestingSource([1], batch_size=0)


def test_single_partition_named_iterable() -> None:
    assert TestingSource([1]).list_parts() == ["iterable"]


def test_any_iterable_works_once_per_build() -> None:
    src = TestingSource(range(3))
    assert src.build_part("s", "iterable", None).next_batch() == [0]
    assert src.build_part("s", "iterable", None).next_batch() == [0], "range re-iterates"


def test_eof_sentinel_ends_the_input() -> None:
    assert _batches([1, 2, TestingSource.EOF(), 3, 4]) == [[1], [2]]
    assert _batches([1, 2, TestingSource.EOF(), 3, 4], batch_size=5) == [[1, 2]]


def test_eof_sentinel_is_resumable() -> None:
    """The snapshot counts consumed items including sentinels; a resume continues after EOF."""
    src = TestingSource([1, 2, 3, TestingSource.EOF(), 4, 5], batch_size=2)
    part = src.build_part("s", "iterable", None)
    assert part.next_awake() is None
    assert (part.next_batch(), part.snapshot()) == ([1, 2], 2)
    assert (part.next_batch(), part.snapshot()) == ([3], 4)
    with pytest.raises(StopIteration):
        part.next_batch()
    assert part.snapshot() == 4
    resumed = src.build_part("s", "iterable", 4)
    assert (resumed.next_batch(), resumed.snapshot()) == ([4, 5], 6)
    with pytest.raises(StopIteration):
        resumed.next_batch()
    middle = src.build_part("s", "iterable", 2)
    assert (middle.next_batch(), middle.snapshot()) == ([3], 4)


def test_abort_makes_run_main_return_with_the_output_so_far() -> None:
    flow = Dataflow("test")
    out: list[int] = []
    src = TestingSource([1, 2, TestingSource.ABORT(), 3, 4])
    op.output("out", op.input("inp", flow, src), TestingSink(out))
    run_main(flow)
    assert out == [1, 2]


def test_abort_fires_only_once_per_sentinel() -> None:
    """Rerunning the same source object skips the already-triggered ABORT."""
    src = TestingSource([1, TestingSource.ABORT(), 2])
    outs = []
    for _ in range(2):
        flow = Dataflow("test")
        out: list[int] = []
        op.output("out", op.input("inp", flow, src), TestingSink(out))
        run_main(flow)
        outs.append(out)
    assert outs == [[1], [1, 2]]


def test_abort_discards_pending_final_state() -> None:
    flow = Dataflow("test")
    s = op.input("inp", flow, TestingSource([("a", 1), ("a", 2), TestingSource.ABORT(), ("a", 3)]))
    running: list[Any] = []
    final: list[Any] = []
    op.output(
        "running",
        op.stateful_map("sum", s, lambda st, v: ((st or 0) + v,) * 2),
        TestingSink(running),
    )
    op.output("final", op.count_final("count", s, lambda kv: kv[0]), TestingSink(final))
    run_main(flow)
    assert running == [("a", 1), ("a", 3)]
    assert final == [], "an aborted run never reaches EOF"


def test_abort_in_a_cluster_returns() -> None:
    flow = Dataflow("test")
    out: list[int] = []
    src = TestingSource([1, 2, TestingSource.ABORT(), 3])
    op.output("out", op.redistribute("spread", op.input("inp", flow, src)), TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert 3 not in out
    assert set(out) <= {1, 2}


def test_abort_emits_the_items_before_it_in_its_batch() -> None:
    """Bytewax 0.21.1 ends the batch at the ABORT and aborts on the next poll."""
    items = [0, 1, 2, TestingSource.ABORT(), 3, 4, 5]
    assert _batches(items, batch_size=2) == [[0, 1], [2]]
    assert _batches(items, batch_size=2) == [[0, 1], [2, 3], [4, 5]]  # the ABORT fired


def _drive(part: Any, calls: int = 4) -> list[Any]:
    """(batch or what was raised, snapshot) after each ``next_batch`` call."""
    log: list[Any] = []
    for _ in range(calls):
        try:
            log.append((part.next_batch(), part.snapshot()))
        except (StopIteration, AbortExecution) as exc:
            log.append((type(exc).__name__, part.snapshot()))
            break
    return log


def test_abort_partition_batches_and_snapshots() -> None:
    """A snapshot taken at the ABORT points at it, as in Bytewax 0.21.1."""
    abort = TestingSource.ABORT()
    src: TestingSource[Any] = TestingSource([0, 1, 2, abort, 3, 4], batch_size=2)
    assert _drive(src.build_part("s", "iterable", None)) == [([0, 1], 2), ([2], 3), ("AbortExecution", 3)]
    # Resumed from that snapshot, the triggered ABORT is passed over.
    # (Headrace counts the passed-over ABORT in the position; Bytewax 0.21.1 does not,
    # so its next resume from 5 would replay item 4.)
    assert _drive(src.build_part("s", "iterable", 3)) == [([3, 4], 6), ("StopIteration", 6)]
    # A fresh ABORT at the resume point fires again.
    fresh: TestingSource[Any] = TestingSource([0, 1, 2, TestingSource.ABORT(), 3, 4])
    assert _drive(fresh.build_part("s", "iterable", 3)) == [([], 3), ("AbortExecution", 3)]


def _abort_flow(out: list[Any], items: list[Any]) -> Dataflow:
    flow = Dataflow("abort_rec")
    s = op.input("inp", flow, TestingSource(items))
    s = op.stateful_map("sum", s, lambda st, v: ((st or 0) + v,) * 2)
    op.output("out", s, TestingSink(out))
    return flow


def test_abort_is_passed_over_on_resume_with_recovery(tmp_path: Any) -> None:
    """``run_main`` twice with recovery: the second run resumes at the ABORT and skips it.

    Same outputs as Bytewax 0.21.1 for the same program.
    """
    from headrace.recovery import RecoveryConfig, init_db_dir

    init_db_dir(tmp_path, 1)

    items = [("a", 1), ("a", 2), TestingSource.ABORT(), ("a", 3), ("a", 4)]
    outs = []
    for _ in range(2):
        out: list[Any] = []
        run_main(
            _abort_flow(out, items),
            epoch_interval=timedelta(0),
            recovery_config=RecoveryConfig(tmp_path),
        )
        outs.append(out)
    assert outs == [[("a", 1), ("a", 3)], [("a", 6), ("a", 10)]]


def test_abort_with_recovery_and_long_epochs_replays_the_epoch(tmp_path: Any) -> None:
    """Nothing of the aborted epoch was committed: the rerun starts over, without the ABORT."""
    from headrace.recovery import RecoveryConfig, init_db_dir

    init_db_dir(tmp_path, 1)

    items = [("a", 1), ("a", 2), TestingSource.ABORT(), ("a", 3)]
    outs = []
    for _ in range(2):
        out: list[Any] = []
        run_main(_abort_flow(out, items), recovery_config=RecoveryConfig(tmp_path))
        outs.append(out)
    assert outs == [[("a", 1), ("a", 3)], [("a", 1), ("a", 3), ("a", 6)]]


def test_a_fresh_abort_fires_again_on_resume(tmp_path: Any) -> None:
    """A new ABORT object (a new process) at the resume point aborts again, as in Bytewax."""
    from headrace.recovery import RecoveryConfig, init_db_dir

    init_db_dir(tmp_path, 1)

    outs = []
    for _ in range(2):
        out: list[Any] = []
        items = [("a", 1), ("a", 2), TestingSource.ABORT(), ("a", 3)]
        run_main(
            _abort_flow(out, items),
            epoch_interval=timedelta(0),
            recovery_config=RecoveryConfig(tmp_path),
        )
        outs.append(out)
    assert outs == [[("a", 1), ("a", 3)], []]


def test_abort_sentinel_state() -> None:
    abort = TestingSource.ABORT()
    assert abort._triggered is False
    part = TestingSource([abort, 1]).build_part("s", "iterable", None)
    with pytest.raises(AbortExecution):
        for _ in range(2):  # the abort may come with the batch after the items before it
            part.next_batch()
    assert abort._triggered is True


def test_pause_splits_the_batch_and_waits() -> None:
    flow = Dataflow("test")
    out: list[tuple[list[int], float]] = []
    items = [1, TestingSource.PAUSE(timedelta(milliseconds=200)), 2]
    s = op.input("inp", flow, TestingSource(items, batch_size=3))
    op.output(
        "out",
        op.flat_map_batch("stamp", s, lambda xs: [(list(xs), time.monotonic())]),
        TestingSink(out),
    )
    run_main(flow)
    assert [b for b, _ in out] == [[1], [2]]
    assert out[1][1] - out[0][1] >= 0.19, "the source is not polled until the pause is over"


def test_pause_sets_next_awake() -> None:
    part = TestingSource([1, TestingSource.PAUSE(timedelta(hours=1)), 2], batch_size=5).build_part(
        "s", "iterable", None
    )
    assert part.next_batch() == [1]
    awake = part.next_awake()
    assert awake is not None
    assert awake - datetime.now(UTC) > timedelta(minutes=59)
    assert part.next_batch() == [2]
    assert part.next_awake() is None


def test_sentinel_types() -> None:
    assert TestingSource.EOF() == TestingSource.EOF()
    assert TestingSource.PAUSE(timedelta(seconds=1)).for_duration == timedelta(seconds=1)


# --- TestingSink -----------------------------------------------------------------------


def test_testing_sink_appends_to_the_given_list() -> None:
    out: list[Any] = ["existing"]
    flow = Dataflow("test")
    op.output("out", op.input("inp", flow, TestingSource([1, 2])), TestingSink(out))
    run_main(flow)
    assert out == ["existing", 1, 2]


def test_testing_sink_is_shared_by_workers() -> None:
    out: list[int] = []
    flow = Dataflow("test")
    s = op.redistribute("spread", op.input("inp", flow, TestingSource(range(40), batch_size=3)))
    op.output("out", s, TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=3)
    assert sorted(out) == list(range(40))


def test_testing_classes_are_not_collected_by_pytest() -> None:
    assert TestingSource.__test__ is False  # type: ignore[attr-defined]
    assert TestingSink.__test__ is False  # type: ignore[attr-defined]


# --- runners --------------------------------------------------------------------------


@pytest.mark.parametrize("interval", [None, timedelta(0), timedelta(milliseconds=5)])
def test_run_main_with_epoch_intervals(interval: timedelta | None) -> None:
    flow = Dataflow("test")
    out: list[Any] = []
    s = op.input("inp", flow, TestingSource([("a", 1), ("b", 2), ("a", 3)]))
    op.output("out", op.reduce_final("sum", s, lambda x, y: x + y), TestingSink(out))
    run_main(flow, epoch_interval=interval)
    assert sorted(out) == [("a", 4), ("b", 2)]


def test_run_main_rejects_a_negative_epoch_interval() -> None:
    flow = Dataflow("test")
    op.output("out", op.input("inp", flow, TestingSource([1])), TestingSink([]))
    with pytest.raises(ValueError, match="epoch_interval"):
        run_main(flow, epoch_interval=timedelta(seconds=-1))


def test_run_main_runs_in_the_calling_thread() -> None:
    import threading

    flow = Dataflow("test")
    threads: list[threading.Thread] = []
    s = op.map(
        "where",
        op.input("inp", flow, TestingSource([1])),
        lambda x: threads.append(threading.current_thread()) or x,
    )
    op.output("out", s, TestingSink([]))
    run_main(flow)
    assert threads == [threading.current_thread()]


def test_a_dataflow_can_run_twice() -> None:
    flow = Dataflow("test")
    out: list[int] = []
    op.output("out", op.input("inp", flow, TestingSource([1, 2])), TestingSink(out))
    run_main(flow)
    run_main(flow)
    assert out == [1, 2, 1, 2]


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_cluster_main_worker_count(workers: int) -> None:
    flow = Dataflow("test")
    seen: set[int] = set()
    s = op.redistribute("spread", op.input("inp", flow, TestingSource(range(64), batch_size=4)))
    s = op.inspect_debug("where", s, lambda _s, _x, _e, w: seen.add(w))
    op.output("out", s, TestingSink([]))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert seen == set(range(workers))


def test_cluster_main_rejects_zero_workers() -> None:
    flow = Dataflow("test")
    op.output("out", op.input("inp", flow, TestingSource([1])), TestingSink([]))
    with pytest.raises(ValueError, match="workers"):
        cluster_main(flow, [], 0, worker_count_per_proc=0)


# --- helpers ----------------------------------------------------------------------------


def test_poll_next_batch_skips_empty_batches() -> None:
    class Slowly(StatelessSourcePartition[int]):
        def __init__(self) -> None:
            self.calls = 0

        def next_batch(self) -> list[int]:
            self.calls += 1
            return [self.calls] if self.calls >= 3 else []

    part = Slowly()
    assert poll_next_batch(part) == [3]
    assert poll_next_batch(TestingSource([7, 8]).build_part("s", "iterable", None)) == [7]


def test_poll_next_batch_times_out() -> None:
    class Never(StatelessSourcePartition[int]):
        def next_batch(self) -> list[int]:
            return []

    with pytest.raises(TimeoutError):
        poll_next_batch(Never(), timeout=timedelta(milliseconds=20))


def test_poll_next_batch_propagates_stop_iteration() -> None:
    part = TestingSource([]).build_part("s", "iterable", None)
    with pytest.raises(StopIteration):
        poll_next_batch(part)


def test_ffwd_iter() -> None:
    it = iter(range(10))
    ffwd_iter(it, 3)
    assert next(it) == 3
    short = iter(range(2))
    ffwd_iter(short, 5)
    assert list(short) == []
    untouched = iter(range(3))
    ffwd_iter(untouched, 0)
    assert list(untouched) == [0, 1, 2]


def test_time_testing_getter() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    clock = TimeTestingGetter(start)
    assert clock.get() == start
    clock.advance(timedelta(seconds=3))
    assert clock.get() == start + timedelta(seconds=3)
    assert clock.now == clock.get()
    clock.now = start
    assert clock.get() == start


# --- python -m headrace.testing ----------------------------------------------------------

_CLI_FLOWS = """\
import os
import headrace.operators as op
from headrace.dataflow import Dataflow
from headrace.testing import TestingSource
from headrace.connectors.stdio import StdOutSink

spread = Dataflow("spread")
s = op.input("inp", spread, TestingSource(range(8)))
s = op.redistribute("spread", s)
op.output("out", op.map("tag", s, lambda x: f"{x} {os.getpid()}"), StdOutSink())

resume = Dataflow("resume")
s = op.input("inp", resume, TestingSource([1, 2, TestingSource.EOF(), 3, 4]))
op.output("out", op.map("str", s, str), StdOutSink())
"""


def _testing_cli(tmp_path: Any, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "cliflows.py").write_text(_CLI_FLOWS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEADRACE_", "BYTEWAX_"))}
    return subprocess.run(
        [sys.executable, "-m", "headrace.testing", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_testing_cli_runs_a_local_cluster(tmp_path: Any) -> None:
    """``-w 2 -p 2``: two processes of two workers; redistribute reaches all four."""
    res = _testing_cli(tmp_path, "cliflows:spread", "-w", "2", "-p", "2")
    assert (res.returncode, res.stderr) == (0, "")
    pairs = [line.split() for line in res.stdout.splitlines()]
    assert sorted(int(x) for x, _pid in pairs) == list(range(8))
    assert len({pid for _x, pid in pairs}) == 2


@pytest.mark.slow
def test_testing_cli_recovery_resumes(tmp_path: Any) -> None:
    """``-r``/``-s``/``-b`` as Bytewax's; the outputs are Bytewax 0.21.1's for the same runs."""
    rec = str(tmp_path / "rec")
    from headrace.recovery import init_db_dir

    init_db_dir(rec, 1)  # as Bytewax needs: python -m bytewax.recovery rec 1
    outs = []
    for _ in range(3):
        res = _testing_cli(tmp_path, "cliflows:resume", "-r", rec, "-s", "1", "-b", "10", "-p", "2")
        assert res.returncode == 0, res.stderr
        outs.append(res.stdout)
    assert outs == ["1\n2\n", "3\n4\n", ""]


def test_testing_cli_failure_exits_1(tmp_path: Any) -> None:
    """Any failed run exits 1, as Bytewax's test entry point does, saying why."""
    res = _testing_cli(tmp_path, "cliflows:nope")
    assert res.returncode == 1
    assert "AttributeError: Failed to find attribute 'nope' in 'cliflows'." in res.stderr


@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_testing_cli_usage(tmp_path: Any) -> None:
    res = _testing_cli(tmp_path, "--help")
    assert res.returncode == 0
    assert res.stdout.startswith("usage: python -m headrace.testing")
    for flag in (
        "-r RECOVERY_DIRECTORY",
        "-s SNAPSHOT_INTERVAL",
        "-b BACKUP_INTERVAL",
        "-w WORKERS_PER_PROCESS",
        "-p PROCESSES",
        "import_str",
    ):
        assert flag in res.stdout
    res = _testing_cli(tmp_path)
    assert res.returncode == 2
    assert "the following arguments are required: import_str" in res.stderr
