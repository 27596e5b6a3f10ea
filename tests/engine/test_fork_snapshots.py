"""Large snapshots written by a forked child (`_writer.ForkedJob`), and by the writer thread.

An epoch of `ASYNC_MIN_ENTRIES` changed keys or more on a worker is written
off the hot path: by a child the worker forks at the barrier (Redis; the
default on Linux) or by the worker's writer thread
(``HEADRACE_SNAPSHOT_FORK=0``, and SQLite). Both must give the same state,
the same errors in the same words as a snapshot written inline, and
exactly-once output across kill -9; a child must never outlive its
worker. Real redis-server, real processes (the kill tests are in
test_recovery.py's kill tests' form).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import headrace.operators as op
from headrace._engine._store import RecoveryStoreError, open_store
from headrace._engine._worker import ASYNC_MIN_ENTRIES
from headrace._engine._writer import CHILD_TIMEOUT_ENV, FORK_ENV, ForkedJob
from headrace.dataflow import Dataflow
from headrace.errors import BytewaxRuntimeError
from headrace.operators import StatefulLogic
from headrace.recovery import RecoveryConfig
from headrace.testing import TestingSink, TestingSource, run_main
from tests.support.procs import children, lines_in, wait_for_commit, wait_for_output
from tests.support.redis_cluster import RedisCluster
from tests.support.runs import check_output, launch, many_keys_input, run_env
from tests.support.servers import RedisServer

ZERO = timedelta(0)
BIG = ASYNC_MIN_ENTRIES + 500  # keys changed in one epoch: written off the hot path


def _sums(flow_id: str, items: list[Any], url: str, prefix: str | None = None) -> dict[str, int]:
    """Run a running sum per key over ``items`` (one epoch per batch); return each key's last sum."""
    flow = Dataflow(flow_id)
    s = op.input("inp", flow, TestingSource(items, batch_size=BIG))
    s = op.stateful_map("sum", s, lambda st, v: ((st or 0) + v,) * 2)
    out: list[tuple[str, int]] = []
    op.output("out", s, TestingSink(out))
    run_main(flow, epoch_interval=ZERO, recovery_config=RecoveryConfig(url, prefix=prefix))
    return dict(out)


@pytest.mark.parametrize("fork", ["1", "0"])
def test_large_epochs_resume_exactly(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fork: str
) -> None:
    monkeypatch.setenv(FORK_ENV, fork)
    items: list[Any] = [(f"k{i}", 1) for i in range(BIG)]
    items += [(f"k{i}", 10) for i in range(BIG)]
    items += [TestingSource.ABORT(), *((f"k{i}", 100) for i in range(BIG))]
    with caplog.at_level(logging.DEBUG, logger="headrace.worker"):
        first = _sums("fork_resume", items, redis_server.url)
        assert first == {f"k{i}": 11 for i in range(BIG)}
        # Resumed from the last committed epoch: the third batch adds to 11.
        second = _sums("fork_resume", items, redis_server.url)
    assert second == {f"k{i}": 111 for i in range(BIG)}
    forked = [r for r in caplog.records if "forked pid" in r.getMessage()]
    # One fork per large epoch; an epoch not committed before the ABORT is replayed.
    assert len(forked) >= 3 if fork == "1" else not forked


@pytest.mark.slow  # the session's Redis Cluster
def test_large_epochs_on_a_redis_cluster_resume_exactly(
    redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(FORK_ENV, "1")
    prefix = f"fork-{os.getpid()}-{time.monotonic_ns()}"
    items: list[Any] = [(f"k{i}", 1) for i in range(BIG)]
    items += [TestingSource.ABORT(), *((f"k{i}", 10) for i in range(BIG))]
    with caplog.at_level(logging.DEBUG, logger="headrace.worker"):
        assert _sums("fork_cluster", items, redis_cluster.url, prefix) == {f"k{i}": 1 for i in range(BIG)}
        assert _sums("fork_cluster", items, redis_cluster.url, prefix) == {f"k{i}": 11 for i in range(BIG)}
    # One fork per large epoch; an epoch not committed before the ABORT is replayed.
    assert len([r for r in caplog.records if "forked pid" in r.getMessage()]) >= 2


class _Sum(StatefulLogic):
    """A running sum per key."""

    def __init__(self, state: int | None) -> None:
        self.n = state or 0

    def on_batch(self, values: list[int]) -> tuple[list[int], bool]:
        self.n += sum(values)
        return [self.n], StatefulLogic.RETAIN

    def snapshot(self) -> int:
        return self.n


class _Refuses(_Sum):
    """A running sum whose `snapshot` refuses key ``k7``."""

    def snapshot(self) -> int:
        if self.n == 7:
            raise ValueError("no snapshot of seven")
        return self.n


@pytest.mark.parametrize(
    ("keys", "fork"), [(100, "1"), (BIG, "0"), (BIG, "1")], ids=["inline", "thread", "fork"]
)
def test_a_user_snapshot_error_has_the_same_words_on_every_path(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, keys: int, fork: str
) -> None:
    monkeypatch.setenv(FORK_ENV, fork)
    flow = Dataflow("refuses")
    s = op.input("inp", flow, TestingSource([(f"k{i}", i) for i in range(keys)], batch_size=BIG))
    s = op.stateful_batch("s", s, _Refuses)
    op.output("out", s, TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as got:
        run_main(flow, epoch_interval=ZERO, recovery_config=RecoveryConfig(redis_server.url))
    assert str(got.value) == (
        'error calling `StatefulBatchLogic.snapshot` in "refuses.s" for key "k7": '
        "ValueError: no snapshot of seven"
    )
    cause = got.value.__cause__
    assert isinstance(cause, ValueError) and str(cause) == "no snapshot of seven"


def _oom_after_first_epoch(url: str) -> Any:
    """A map that makes Redis refuse every write (``maxmemory 1``) at the first item of batch 2."""
    import redis

    client = redis.Redis.from_url(url)

    def poison(kv: tuple[str, int]) -> tuple[str, int]:
        if kv == ("k0", 2):
            client.config_set("maxmemory", 1)
        return kv

    return poison


def _oom_error(url: str, flow_id: str) -> str:
    """The error of a run whose first epoch (large) Redis refuses to store, in words free of the port."""
    import redis

    client = redis.Redis.from_url(url)
    client.config_set("maxmemory-policy", "noeviction")
    items = [(f"k{i}", 1) for i in range(10)] + [(f"k{i}", 2) for i in range(BIG)]
    flow = Dataflow(flow_id)
    s = op.input("inp", flow, TestingSource(items, batch_size=BIG))
    s = op.map("poison", s, _oom_after_first_epoch(url))
    s = op.stateful_map("sum", s, lambda st, v: ((st or 0) + v,) * 2)
    op.output("out", s, TestingSink([]))
    try:
        with pytest.raises(RecoveryStoreError) as got:
            run_main(flow, epoch_interval=ZERO, recovery_config=RecoveryConfig(url))
    finally:
        client.config_set("maxmemory", 0)
    return re.sub(r"127\.0\.0\.1:\d+", "HOST", str(got.value)).replace(flow_id, "F")


def test_a_store_error_in_the_child_has_the_words_of_the_thread(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FORK_ENV, "0")
    thread = _oom_error(redis_server.url, "oom_thread")
    monkeypatch.setenv(FORK_ENV, "1")
    fork = _oom_error(redis_server.url, "oom_fork")
    assert fork == thread
    assert fork.startswith(
        "Redis at redis://HOST/0 (prefix 'F') refused a command while writing the snapshot of "
        "epoch 1: command not allowed when used memory > 'maxmemory'."
    )


class _HangsInChild(_Sum):
    """A running sum whose `snapshot` never returns in a forked child (as one stuck on a lock)."""

    parent = os.getpid()

    def snapshot(self) -> int:
        if os.getpid() != _HangsInChild.parent:
            time.sleep(3600)
        return self.n


def test_a_child_that_hangs_is_killed_and_stops_the_run(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FORK_ENV, "1")
    monkeypatch.setenv(CHILD_TIMEOUT_ENV, "1.5")
    flow = Dataflow("hangs")
    s = op.input("inp", flow, TestingSource([(f"k{i}", 1) for i in range(BIG)], batch_size=BIG))
    s = op.stateful_batch("s", s, _HangsInChild)
    op.output("out", s, TestingSink([]))
    with pytest.raises(TimeoutError) as got:
        run_main(flow, epoch_interval=ZERO, recovery_config=RecoveryConfig(redis_server.url))
    pid = int(re.search(r"\(pid (\d+)\)", str(got.value)).group(1))  # type: ignore[union-attr]
    assert str(got.value) == (
        f"the process writing the snapshot of epoch 1 (pid {pid}) did not finish within 1.5 s: killed; "
        "if it hangs again, set HEADRACE_SNAPSHOT_FORK=0 to write large snapshots with a thread instead"
    )
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    # Nothing of the epoch was committed: a next run starts from the beginning.
    meta = open_store(redis_server.url, "hangs").load_meta()
    assert meta is not None and meta.committed_epoch == 0


def test_a_mistyped_child_timeout_is_refused_at_the_start(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FORK_ENV, "1")
    monkeypatch.setenv(CHILD_TIMEOUT_ENV, "5m")
    flow = Dataflow("mistyped")
    s = op.input("inp", flow, TestingSource([("k", 1)]))
    s = op.stateful_map("sum", s, lambda st, v: ((st or 0) + v,) * 2)
    out: list[Any] = []
    op.output("out", s, TestingSink(out))
    with pytest.raises(
        ValueError, match=r"^HEADRACE_SNAPSHOT_CHILD_TIMEOUT='5m': must be a number of seconds above 0$"
    ):
        run_main(flow, epoch_interval=ZERO, recovery_config=RecoveryConfig(redis_server.url))
    assert out == []


def test_a_forked_job_reports_a_child_that_died() -> None:
    job = ForkedJob(lambda: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(RuntimeError, match=r"ended without a result: killed by signal 9"):
        job.result()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("processes", [1, 2])
def test_kill_9_of_workers_whose_children_write_kills_the_children(
    tmp_path: Path, redis_server: RedisServer, processes: int
) -> None:
    """A worker's forked child is stopped mid-write (SIGSTOP): its epoch stays
    in flight while the worker goes on to its next barrier. kill -9 of the
    workers then: the children die with them (by pid), nothing more was
    committed, and the resumed run's output is exact."""
    counts = many_keys_input(tmp_path / "in", lines=3000)
    env = run_env(tmp_path, HR_SLOW="0.03", **{FORK_ENV: "1"})
    args = ["-p", str(processes), "-r", redis_server.url, "--epoch-interval", "1.0"]
    store = open_store(redis_server.url, "recovery_wc")
    p = launch(args, env)
    try:
        wait_for_commit(p, store, 2)
        workers = children(p) if processes > 1 else [p.pid]
        stopped = _stop_a_writing_child(p, workers)
        seen = lines_in(tmp_path / "out")
        wait_for_output(p, tmp_path / "out", seen + ASYNC_MIN_ENTRIES)
        assert lines_in(tmp_path / "out") >= seen + ASYNC_MIN_ENTRIES, "the worker waited for its child"
        time.sleep(1.0)  # at its next barrier now, waiting for the stopped child
        before = store.load_meta()
        writing = [c for w in workers for c in _children_of(w)]
        assert stopped in writing
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive := [c for c in writing if _alive(c)]:
            assert time.monotonic() < deadline, f"children outlived their workers: {alive}"
            time.sleep(0.05)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
        after = store.load_meta()
        assert before is not None and after is not None
        assert after.committed_epoch == before.committed_epoch
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)
    p = launch(args, env)
    _, err = p.communicate(timeout=180)
    assert p.returncode == 0, err[-2000:]
    check_output(tmp_path / "out", counts)


def _stop_a_writing_child(p: subprocess.Popen[str], workers: list[int]) -> int:
    """SIGSTOP the first forked child of ``workers`` seen writing; return its pid.

    Writing: it has run for a clock tick (10 ms) of CPU, so it is long past
    its first step (asking for SIGKILL when its worker dies).
    """
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert p.poll() is None, p.communicate()[1][-2000:]
        for w in workers:
            for c in _children_of(w):
                if _cpu_ticks(c) < 1:
                    continue
                try:
                    os.kill(c, signal.SIGSTOP)
                except ProcessLookupError:
                    continue
                if _state(c) == "T":
                    return c
                os.kill(c, signal.SIGCONT)
        time.sleep(0.002)
    pytest.fail("no forked child seen")


def _state(pid: int) -> str:
    """The state letter of ``pid`` (R, S, T, Z, ...), or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""


def _cpu_ticks(pid: int) -> int:
    """The user and system CPU time of ``pid``, in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie no longer does)."""
    return _state(pid) not in ("", "Z")


def _children_of(pid: int) -> list[int]:
    """The child processes of ``pid``, of any of its threads (a worker's forked snapshot writers)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return kids
