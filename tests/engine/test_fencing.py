"""One owner of a recovery store at a time, and no orphaned workers (issue 19, items 1-2).

Real redis-server and SQLite part files; real processes, killed with SIGKILL.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from headrace._engine._store import FencedError, open_store
from tests.support.procs import children, wait_for_output
from tests.support.runs import RECOVERY_FLOW as FLOW
from tests.support.runs import ROOT, check_output, launch, run_env, write_input
from tests.support.servers import RedisServer
from tests.support.stores import store_at

# ------------------------------------------------------------ the stores


def test_a_fenced_execution_can_neither_write_nor_commit(location: str) -> None:
    old, new = store_at(location), store_at(location)
    old.start_execution(1, 4)
    old.write_epoch(1, [("st", 0, "k", b"old-1")])
    old.commit(1, 1)
    old.release()  # as a run that crashed after its lease ran out
    meta = new.start_execution(1, 4)
    assert meta.committed_epoch == 1 and meta.execution_id == new.execution_id
    for attempt in (
        lambda: old.write_epoch(2, [("st", 0, "k", b"old-2"), ("st", 0, "x", b"1")]),
        lambda: old.commit(2, 1),
        old.heartbeat,
    ):
        with pytest.raises(FencedError) as err:
            attempt()
        assert f"was fenced off {new.description} by execution {new.execution_id}" in str(err.value)
        assert old.execution_id in str(err.value)
    # Nothing of the stale execution's got in: same epoch number, other keys.
    new.write_epoch(2, [("st", 0, "k", b"new-2")])
    new.commit(2, 1)
    assert new.load("st", [0]) == {0: {"k": b"new-2"}}
    check = new.load_meta()
    assert check is not None and check.committed_epoch == 2
    assert check.execution_id == new.execution_id


def test_a_start_waits_for_a_live_owner_to_stop_then_owns_the_store(location: str) -> None:
    old, new = store_at(location), store_at(location)
    old.start_execution(1, 4)  # holds the lease: a live run
    done: list[str] = []
    t = threading.Thread(target=lambda: done.append(new.start_execution(1, 4).execution_id))
    t.start()
    # The newcomer fences the old execution first...
    while old.owner() == old.execution_id:
        time.sleep(0.01)
    with pytest.raises(FencedError):
        old.heartbeat()
    # ...and goes on only once the old one says it stopped (or its lease ran out).
    assert t.is_alive() and not done
    old.release()
    t.join()
    assert done == [new.owner()]


def test_a_second_process_joins_only_the_current_execution(location: str) -> None:
    first, other, later = store_at(location), store_at(location), store_at(location)
    first.start_execution(2, 4)
    other.join_execution(first.execution_id)
    other.write_epoch(1, [("st", 1, "k", b"v")])
    first.release()
    later.start_execution(2, 4)
    joiner = store_at(location)
    with pytest.raises(FencedError, match="stops without starting this process"):
        joiner.join_execution(first.execution_id)
    with pytest.raises(FencedError):
        other.write_epoch(2, [("st", 1, "k", b"w")])


# ------------------------------------------------------------ real clusters


def _free_addresses(n: int) -> str:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return ";".join(f"127.0.0.1:{s.getsockname()[1]}" for s in socks)
    finally:
        for s in socks:
            s.close()


@pytest.mark.timeout(300)
def test_restart_while_the_old_workers_still_run_takes_over_exactly_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """What a supervisor does after the -p parent died and its workers lived on."""
    counts = write_input(tmp_path / "in")
    env = run_env(tmp_path, HR_SLOW="0.04")
    store = ["-r", redis_server.url, "--epoch-interval", "0.1"]
    addrs = _free_addresses(2)
    # The orphans: a cluster's two workers with no parent watching them.
    old = [launch([*store, "-i", str(i), "-a", addrs], env) for i in range(2)]
    wait_for_output(old[0], tmp_path / "out", 300)
    assert all(p.poll() is None for p in old), "the old cluster ended before the restart"
    new = launch(["-p", "2", *store], env)
    _, err = new.communicate(timeout=240)
    assert new.returncode == 0, err[-3000:]
    errs = [p.communicate(timeout=60)[1] for p in old]
    assert [p.returncode for p in old] == [1, 1], errs
    assert "was fenced off" in errs[0] and "by execution" in errs[0], errs[0][-2000:]
    assert "FencedError" in errs[1] or "was fenced off" in errs[1], errs[1][-2000:]
    assert "takes over" in err, err[-2000:]
    check_output(tmp_path / "out", counts)


@pytest.mark.timeout(300)
def test_two_starts_at_once_one_takes_over_the_other_stops(tmp_path: Path, redis_server: RedisServer) -> None:
    counts = write_input(tmp_path / "in")
    env = run_env(tmp_path, HR_SLOW="0.02")
    args = ["-p", "2", "-r", redis_server.url, "--epoch-interval", "0.1"]
    runs = [launch(args, env), launch(args, env)]
    results = [(p.communicate(timeout=240)[1], p.returncode) for p in runs]
    codes = sorted(rc for _, rc in results)
    assert codes == [0, 1], [err[-2000:] for err, _ in results]
    fenced = next(err for err, rc in results if rc == 1)
    assert "was fenced off" in fenced, fenced[-2000:]
    check_output(tmp_path / "out", counts)


@pytest.mark.timeout(120)
def test_a_fenced_process_waiting_for_its_peers_stops_and_says_why(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    write_input(tmp_path / "in", files=1, lines=10)
    env = run_env(tmp_path)
    addrs = _free_addresses(2)
    # Process 0 starts the execution, then waits for a process 1 that never comes...
    p0 = launch(["-r", redis_server.url, "-i", "0", "-a", addrs, "--startup-timeout", "4"], env)
    store = open_store(redis_server.url, "recovery_wc")
    while store.owner() == "":
        time.sleep(0.02)
    # ...while another start takes the store over.
    store.start_execution(1, 256)
    store.release()
    _, err = p0.communicate(timeout=60)
    assert p0.returncode == 1
    assert "was fenced off" in err and f"by execution {store.execution_id}" in err, err[-2000:]


# ------------------------------------------------------------ no orphans


@pytest.mark.timeout(120)
def test_workers_stop_when_the_parent_is_killed(tmp_path: Path) -> None:
    write_input(tmp_path / "in", lines=8000)
    env = run_env(tmp_path, HR_SLOW="1")  # minutes of input: they can't just finish it
    with (tmp_path / "log").open("w") as log:  # not a pipe the workers would keep open
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headrace.run",
                FLOW,
                "-p",
                "2",
                "--epoch-interval",
                "30",
                "--metrics-port",
                "0",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
            text=True,
        )
    wait_for_output(p, tmp_path / "out", 1)
    kids = children(p)
    assert p.poll() is None and len(kids) == 2
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 60  # generous: only "they exit" is asserted

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        return state != "Z"

    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [k for k in kids if alive(k)]
    for k in left:  # don't leave them running when the test fails
        os.kill(k, signal.SIGKILL)
    assert not left, "workers outlived their killed parent"


@pytest.mark.timeout(180)
def test_every_process_logs_the_epoch_it_resumes_from(tmp_path: Path, redis_server: RedisServer) -> None:
    """Process 0 decides the epoch; the others, told in the handshake, log it too (pods' logs)."""
    write_input(tmp_path / "in")
    env = run_env(tmp_path)
    store = ["-r", redis_server.url, "--epoch-interval", "0.1", "--log-level", "info"]

    def cluster() -> list[str]:
        addrs = _free_addresses(2)
        procs = [launch([*store, "-i", str(i), "-a", addrs], env) for i in range(2)]
        done = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in done]
        return [err for _, err in done]

    first = cluster()
    assert not any("resuming from committed epoch" in err for err in first)
    second = cluster()
    epochs = [re.findall(r"resuming from committed epoch (\d+)", err) for err in second]
    assert len(epochs[0]) == 1 and int(epochs[0][0]) > 0, second[0][-2000:]
    assert epochs[1] == epochs[0], second[1][-2000:]


def test_a_child_whose_parent_died_before_its_death_signal_was_set_exits() -> None:
    """The fork-to-prctl window: a child that finds another parent exits before it runs."""
    import functools

    from headrace.run import _detach_child

    def run(parent: int) -> tuple[int, str]:
        res = subprocess.run(
            [sys.executable, "-c", "print('ran')"],
            capture_output=True,
            text=True,
            preexec_fn=functools.partial(_detach_child, parent),
            timeout=60,
        )
        return res.returncode, res.stdout

    assert run(os.getpid()) == (0, "ran\n")
    assert run(os.getpid() + 1_000_000) == (1, "")  # a parent pid that is not its parent
