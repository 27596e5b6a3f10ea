"""Recovery: the store suite (Redis and SQLite), resume, crash, rescale, Redis outages.

Every test talks to a real redis-server (started on a free port) or a real
SQLite file; crash tests kill real worker processes with SIGKILL.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import headrace.operators as op
from headrace._engine._store import PARTS, Entry, RecoveryStoreError, open_store
from headrace.dataflow import Dataflow
from headrace.recovery import (
    InconsistentPartitionsError,
    MissingPartitionsError,
    NoPartitionsError,
    RecoveryConfig,
    init_db_dir,
)
from headrace.recovery import main as recovery_main
from headrace.testing import TestingSink, TestingSource, cluster_main, run_main
from tests.support.procs import children, lines_in, wait_for_commit, wait_for_output
from tests.support.runs import (
    check_output,
    launch,
    many_keys_input,
    run_cli,
    run_env,
    run_rescaled,
    run_with_kills,
    write_input,
)
from tests.support.servers import RedisServer
from tests.support.stores import store_at

ZERO = timedelta(0)


# ------------------------------------------------------------ store suite


def test_store_roundtrip_and_merge(location: str) -> None:
    s = store_at(location)
    assert s.load_meta() is None
    meta = s.start_execution(worker_count=2, key_groups=8)
    assert (meta.committed_epoch, meta.worker_count, meta.key_groups) == (0, 2, 8)
    s.write_epoch(1, [("st", 3, "a", b"1"), ("st", 3, "b", b"2"), ("src", PARTS, "p0", b"x")])
    s.commit(1, 10)
    s.write_epoch(2, [("st", 3, "a", b"11"), ("st", 3, "b", b""), ("src", PARTS, "p0", b"y")])
    s.commit(2, 10)
    assert s.load("st", [3, 4]) == {3: {"a": b"11"}}
    assert s.load("src", [PARTS]) == {PARTS: {"p0": b"y"}}
    meta2 = s.load_meta()
    assert meta2 is not None and meta2.committed_epoch == 2
    s.close()


def test_store_ignores_and_drops_uncommitted_epochs(location: str) -> None:
    s = store_at(location)
    s.start_execution(1, 4)
    s.write_epoch(1, [("st", 0, "k", b"committed")])
    s.commit(1, 1)
    s.write_epoch(2, [("st", 0, "k", b"uncommitted"), ("st", 0, "stray", b"z")])
    assert s.load("st", [0]) == {0: {"k": b"committed"}}
    # A new execution deletes epoch 2 before anything else is written...
    meta = s.start_execution(1, 4)
    assert meta.committed_epoch == 1
    # ...so a rewrite of epoch 2 with other keys can't resurrect `stray`.
    s.write_epoch(2, [("st", 0, "k", b"v2")])
    s.commit(2, 1)
    assert s.load("st", [0]) == {0: {"k": b"v2"}}


def test_store_compaction_keeps_state(location: str) -> None:
    s = store_at(location)
    s.start_execution(1, 4)
    rng = random.Random(7)
    expected: dict[str, bytes] = {}
    for epoch in range(1, 30):
        entries: list[Entry] = []
        for _ in range(5):
            k = f"k{rng.randrange(10)}"
            v = b"" if rng.random() < 0.2 else str(rng.random()).encode()
            entries.append(("st", 1, k, v))
            if v:
                expected[k] = v
            else:
                expected.pop(k, None)
        s.write_epoch(epoch, entries)
        s.commit(epoch, 1)
        if epoch % 7 == 0:
            s.compact(epoch - 2)
        assert s.load("st", [1]).get(1, {}) == expected
    meta = s.load_meta()
    assert meta is not None and meta.base_epoch > 0


def test_store_prefixes_are_isolated_and_delete_all(location: str) -> None:
    a, b = store_at(location, "a"), store_at(location, "b")
    a.start_execution(1, 2)
    b.start_execution(1, 2)
    a.write_epoch(1, [("st", 0, "x", b"1")])
    a.commit(1, 1)
    b.write_epoch(1, [("st", 0, "y", b"2")])
    b.commit(1, 1)
    assert b.load("st", [0]) == {0: {"y": b"2"}}
    assert a.summary()["st"]["keys"] == 1
    assert a.delete_all() > 0
    assert a.load_meta() is None
    assert b.load("st", [0]) == {0: {"y": b"2"}}


def test_redis_keys_share_one_hash_tag(redis_server: RedisServer) -> None:
    import redis

    s = open_store(redis_server.url, "tagged")
    s.start_execution(1, 4)
    s.write_epoch(1, [("st", 2, "k", b"v"), ("src", PARTS, "p", b"s")])
    s.commit(1, 1)
    client = redis.Redis.from_url(redis_server.url)
    keys = [k.decode() if isinstance(k, bytes) else k for k in client.keys("*")]
    assert keys and all(k.startswith("hr{tagged}:") for k in keys), keys


# ------------------------------------------------------------ resume in-process


def _sum_flow(items: list[Any], out: list[Any], flow_id: str = "resume") -> Dataflow:
    flow = Dataflow(flow_id)
    s = op.input("inp", flow, TestingSource(items))
    s = op.stateful_map("sum", s, lambda st, v: ((st or 0) + v, (st or 0) + v))
    op.output("out", s, TestingSink(out))
    return flow


def test_resume_after_abort_continues_from_committed_state(location: str) -> None:
    items = [("a", 1), ("b", 10), ("a", 2), TestingSource.ABORT(), ("a", 3), ("b", 20)]
    config = RecoveryConfig(location)
    out: list[Any] = []
    run_main(_sum_flow(items, out), epoch_interval=ZERO, recovery_config=config)
    assert out == [("a", 1), ("b", 10), ("a", 3)]
    out2: list[Any] = []
    run_main(_sum_flow(items, out2), epoch_interval=ZERO, recovery_config=config)
    assert out2 == [("a", 6), ("b", 30)]


def test_crash_in_the_first_epoch_loses_nothing(location: str) -> None:
    # A long epoch: the abort happens before anything commits.
    items = [("a", 1), ("a", 2), TestingSource.ABORT(), ("a", 3)]
    config = RecoveryConfig(location)
    out: list[Any] = []
    run_main(_sum_flow(items, out), epoch_interval=timedelta(seconds=60), recovery_config=config)
    out2: list[Any] = []
    run_main(_sum_flow(items, out2), epoch_interval=timedelta(seconds=60), recovery_config=config)
    assert out2 == [("a", 1), ("a", 3), ("a", 6)]


def test_rescale_in_process_threads_gives_same_state(location: str) -> None:
    keys = [f"k{i}" for i in range(40)]
    items: list[Any] = []
    for r in range(3):
        items.extend((k, r + 1) for k in keys)
        items.append(TestingSource.EOF())
    config = RecoveryConfig(location)
    finals: dict[str, int] = {}
    for workers in (2, 3, 1):
        out: list[Any] = []
        flow = _sum_flow(items, out, "rescale")
        cluster_main(flow, [], 0, worker_count_per_proc=workers, epoch_interval=ZERO, recovery_config=config)
        finals.update(dict(out))
    assert finals == {k: 6 for k in keys}


def test_join_and_fold_state_survive_restart(location: str) -> None:
    config = RecoveryConfig(location)

    def build(out: list[Any]) -> Dataflow:
        flow = Dataflow("joinrec")
        left = op.input("l", flow, TestingSource([("u1", "ann"), TestingSource.EOF(), ("u2", "bo")]))
        right = op.input("r", flow, TestingSource([TestingSource.EOF(), ("u1", 30), ("u2", 40)]))
        joined = op.join("j", left, right)
        op.output("o", joined, TestingSink(out))
        return flow

    out: list[Any] = []
    run_main(build(out), epoch_interval=ZERO, recovery_config=config)
    assert out == []
    out2: list[Any] = []
    run_main(build(out2), epoch_interval=ZERO, recovery_config=config)
    assert sorted(out2) == [("u1", ("ann", 30)), ("u2", ("bo", 40))]


def test_unpicklable_state_fails_at_first_snapshot_naming_step(tmp_path: Path) -> None:
    import threading

    flow = Dataflow("unpick")
    s = op.input("inp", flow, TestingSource([("a", 1)]))
    s = op.stateful_map("holds_lock", s, lambda st, v: (threading.Lock(), v))
    op.output("out", s, TestingSink([]))
    init_db_dir(tmp_path, 1)
    with pytest.raises(RuntimeError, match=r"holds_lock.*lock.*can't be pickled"):
        run_main(flow, epoch_interval=ZERO, recovery_config=RecoveryConfig(tmp_path))


def test_admin_cli_show_and_delete(location: str, capsys: pytest.CaptureFixture[str]) -> None:
    run_main(
        _sum_flow([("a", 1), ("b", 2)], []), epoch_interval=ZERO, recovery_config=RecoveryConfig(location)
    )
    assert recovery_main(["show", location, "--flow-id", "resume"]) == 0
    shown = capsys.readouterr().out
    assert '"committed_epoch"' in shown and '"resume.sum.stateful_batch"' in shown
    assert recovery_main(["delete", location, "--flow-id", "resume", "--yes"]) == 0
    assert "deleted" in capsys.readouterr().out
    assert open_store(location, "resume").load_meta() is None


# ------------------------------------------------------------ multi-process crashes


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_mid_run_then_restart_loses_and_duplicates_nothing(
    tmp_path: Path, redis_server: RedisServer, seed: int
) -> None:
    counts = write_input(tmp_path / "in")
    env = run_env(tmp_path, HR_SLOW="0.03")
    rng = random.Random(seed)
    args = ["-p", "2", "-r", redis_server.url, "--epoch-interval", "0.1"]
    assert run_with_kills(lambda: launch(args, env), tmp_path / "out", rng) >= 1
    check_output(tmp_path / "out", counts)


@pytest.mark.timeout(300)
def test_kill_9_while_the_snapshot_writer_has_an_epoch_in_flight(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Epochs of >= ASYNC_MIN_ENTRIES keys per worker go to the writer thread
    (``HEADRACE_SNAPSHOT_FORK=0``; forked children: test_fork_snapshots.py).

    Redis pauses writes, so the writers' epochs stay in flight while the
    workers go on (their output grows); kill -9 then: nothing past the
    committed epoch is committed, and the resumed run's output is exact.
    """
    import redis

    from headrace._engine._worker import ASYNC_MIN_ENTRIES

    counts = many_keys_input(tmp_path / "in", lines=3000)
    assert len(counts) > 4 * ASYNC_MIN_ENTRIES
    # Epochs of 2 s: well over ASYNC_MIN_ENTRIES keys per worker even on a
    # loaded machine (a smaller epoch is written inline, and waits for Redis).
    env = run_env(tmp_path, HR_SLOW="0.02", HEADRACE_SNAPSHOT_FORK="0")
    args = ["-p", "2", "-r", redis_server.url, "--epoch-interval", "2.0"]
    client = redis.Redis.from_url(redis_server.url)
    store = open_store(redis_server.url, "recovery_wc")
    p = launch(args, env)
    try:
        wait_for_commit(p, store, 2)
        client.execute_command("CLIENT", "PAUSE", "60000", "WRITE")
        try:
            paused_at = store.load_meta()
            assert paused_at is not None
            seen = lines_in(tmp_path / "out")
            wait_for_output(p, tmp_path / "out", seen + 2 * ASYNC_MIN_ENTRIES)  # went on past the barrier
            pids = [*children(p), p.pid]
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            p.wait(30)
            after = store.load_meta()
            assert after is not None and after.committed_epoch == paused_at.committed_epoch
        finally:
            client.execute_command("CLIENT", "UNPAUSE")
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)
    p = launch(args, env)
    _, err = p.communicate(timeout=180)
    assert p.returncode == 0, err[-2000:]
    check_output(tmp_path / "out", counts)


@pytest.mark.timeout(300)
def test_rescale_2_3_1_processes_across_restarts(tmp_path: Path, redis_server: RedisServer) -> None:
    counts = write_input(tmp_path / "in")
    env = run_env(tmp_path, HR_SLOW="0.02")
    run_rescaled(redis_server.url, env, tmp_path / "out")
    check_output(tmp_path / "out", counts)


@pytest.mark.timeout(300)
def test_redis_outage_stops_with_clear_error_then_resumes(tmp_path: Path, redis_server: RedisServer) -> None:
    counts = write_input(tmp_path / "in")
    env = run_env(tmp_path, HR_SLOW="0.02")
    args = ["-r", redis_server.url, "--epoch-interval", "0.1", "--recovery-retry", "3"]
    p = launch(args, env)
    store = open_store(redis_server.url, "recovery_wc")
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline:
        meta = store.load_meta()
        if meta is not None and meta.committed_epoch >= 1:
            break
        time.sleep(0.02)
    assert p.poll() is None, "the run ended before Redis could be stopped"
    redis_server.stop()
    stopped = time.monotonic()
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0
    assert time.monotonic() - stopped < 30
    assert f"Redis at {redis_server.url}" in err and "unreachable" in err, err[-2000:]
    redis_server.start()
    committed = open_store(redis_server.url, "recovery_wc").load_meta()
    assert committed is not None and committed.committed_epoch > 0
    p = launch(args, env)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    check_output(tmp_path / "out", counts)


def test_unreachable_redis_fails_fast_with_named_url(tmp_path: Path) -> None:
    from tests.support.servers import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    flow = _sum_flow([("a", 1)], [])
    with pytest.raises(RecoveryStoreError, match=f"Redis at {url}.*unreachable"):
        run_main(flow, recovery_config=RecoveryConfig(url, retry_for=1.0))


# ------------------------------------------------------------ python -m headrace.recovery DIR N


def _recovery_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace.recovery", *args], capture_output=True, text=True, timeout=60
    )


def test_bytewax_form_of_the_cli_inits_a_directory_a_run_resumes_from(tmp_path: Path) -> None:
    """``python -m headrace.recovery DB_DIR PART_COUNT`` (Bytewax's form) does what ``init`` does."""
    db_dir = tmp_path / "state"
    res = _recovery_cli(str(db_dir), "2")
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    assert sorted(os.listdir(db_dir)) == ["part-0.sqlite3", "part-1.sqlite3"]
    again = _recovery_cli(str(db_dir), "2")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    items = [("a", 1), ("b", 2), TestingSource.EOF(), ("a", 10)]
    outs = []
    for _ in range(2):
        out: list[Any] = []
        run_main(_sum_flow(items, out), epoch_interval=ZERO, recovery_config=RecoveryConfig(db_dir))
        outs.append(out)
    assert outs == [[("a", 1), ("b", 2)], [("a", 11)]]


def test_recovery_cli_init_forms_and_errors(tmp_path: Path) -> None:
    res = _recovery_cli("init", str(tmp_path / "a" / "b"), "3")
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    assert sorted(os.listdir(tmp_path / "a" / "b")) == [f"part-{i}.sqlite3" for i in range(3)]
    res = _recovery_cli(str(tmp_path / "neg"), "-1")
    assert (res.returncode, res.stderr) == (1, "error: count must be >= 0; got -1\n")
    res = _recovery_cli(str(tmp_path / "x"), "many")
    assert res.returncode == 2
    assert "argument part_count: invalid int value: 'many'" in res.stderr
    (tmp_path / "file").write_text("")
    res = _recovery_cli(str(tmp_path / "file"), "1")
    assert res.returncode == 1
    assert res.stderr.startswith(f"error: can't create recovery directory '{tmp_path / 'file'}'")
    res = _recovery_cli("--help")
    assert res.returncode == 0
    assert "{show,delete,init,snapshot,snapshots,restore}" in res.stdout
    assert "DB_DIR PART_COUNT" in res.stdout
    assert not (tmp_path / "neg").exists() and not (tmp_path / "x").exists()


# ------------------------------------------------------------ the recovery directory's parts


def _keep_max_flow(items: list[Any], out: list[Any]) -> Dataflow:
    flow = Dataflow("test_df")
    s = op.input("inp", flow, TestingSource(items))
    s = op.stateful_map("max", s, lambda m, v: (max(m or 0, v), max(m or 0, v)))
    op.output("out", s, TestingSink(out))
    return flow


def _parts(db_dir: Path, flow_id: str) -> list[dict[str, object]]:
    from headrace._engine._sqlite_store import SqliteStore

    store = SqliteStore(db_dir, flow_id)
    try:
        return store.parts()
    finally:
        store.close()


def test_init_makes_real_part_files_each_knowing_its_index(tmp_path: Path) -> None:
    import sqlite3

    init_db_dir(tmp_path / "d", 3)
    assert sorted(os.listdir(tmp_path / "d")) == [f"part-{i}.sqlite3" for i in range(3)]
    headers = []
    for i in range(3):
        with sqlite3.connect(tmp_path / "d" / f"part-{i}.sqlite3") as c:
            h = dict(c.execute("SELECT k, v FROM hr_part"))
        headers.append((h["format"], h["index"], h["count"]))
        assert len(h["dir_id"]) == 32
    assert headers == [("headrace-recovery-part", str(i), "3") for i in range(3)]
    init_db_dir(tmp_path / "d", 3)  # again: harmless
    with pytest.raises(ValueError, match="already holds 3 recovery partitions; can't init it with 2"):
        init_db_dir(tmp_path / "d", 2)
    init_db_dir(tmp_path / "zero", 0)  # as Bytewax: no parts
    assert os.listdir(tmp_path / "zero") == []


def test_no_parts(tmp_path: Path) -> None:
    # Bytewax's test_no_parts: no init_db_dir -> NoPartitionsError at run start, nothing run.
    out: list[Any] = []
    with pytest.raises(NoPartitionsError) as info:
        run_main(
            _keep_max_flow([("a", 1)], out),
            epoch_interval=ZERO,
            recovery_config=RecoveryConfig(str(tmp_path)),
        )
    assert str(info.value) == (
        f"No recovery partitions found on any worker; can't resume (recovery directory "
        f"'{tmp_path}' has no part-N.sqlite3 files): run `python -m headrace.recovery "
        f"{tmp_path} N` (or init_db_dir('{tmp_path}', N)) first to create N partitions"
    )
    assert out == []
    assert os.listdir(tmp_path) == []  # and nothing was created there


def test_a_directory_that_does_not_exist_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    with pytest.raises(FileNotFoundError, match=f'recovery directory "{missing}" does not exist'):
        run_main(_keep_max_flow([("a", 1)], []), recovery_config=RecoveryConfig(missing))
    assert not missing.exists()


def test_missing_parts(tmp_path: Path) -> None:
    # Bytewax's test_missing_parts, plus: a part deleted after a run is an error, not a fresh start.
    init_db_dir(tmp_path, 3)
    out: list[Any] = []
    run_main(
        _keep_max_flow([("a", 4), ("b", 5)], out),
        epoch_interval=ZERO,
        recovery_config=RecoveryConfig(str(tmp_path)),
    )
    assert out == [("a", 4), ("b", 5)]
    os.remove(tmp_path / "part-0.sqlite3")
    os.remove(tmp_path / "part-2.sqlite3")
    out.clear()
    with pytest.raises(MissingPartitionsError) as info:
        run_main(
            _keep_max_flow([("a", 1)], out),
            epoch_interval=ZERO,
            recovery_config=RecoveryConfig(str(tmp_path)),
        )
    assert str(info.value) == (
        f"Missing recovery partitions part-0.sqlite3, part-2.sqlite3 of 3 in '{tmp_path}'; "
        "can't resume: restore them from a backup (state in them would be lost), or delete "
        "the directory and init it again to start over"
    )
    assert out == []
    with pytest.raises(MissingPartitionsError, match="init does not recreate lost partitions"):
        init_db_dir(tmp_path, 3)


def test_inconsistent_parts(tmp_path: Path) -> None:
    # Bytewax's test_inconsistent_parts: part 0 rolled back to its initial copy while the
    # others moved on and (backup_interval 0) kept no history to roll back with it.
    import shutil

    init_db_dir(tmp_path, 3)
    config = RecoveryConfig(str(tmp_path), backup_interval=ZERO)
    shutil.copy(tmp_path / "part-0.sqlite3", tmp_path / "part-0.run0")
    out: list[Any] = []
    flow = _keep_max_flow([("a", 4), ("b", 4), TestingSource.ABORT(), ("a", 1), ("b", 5)], out)
    run_main(flow, epoch_interval=ZERO, recovery_config=config)
    assert out == [("a", 4), ("b", 4)]
    parts = _parts(tmp_path, "test_df")
    newest = parts[1]["committed_epoch"]
    assert [(p["committed_epoch"], p["base_epoch"]) for p in parts] == [(newest, newest)] * 3
    shutil.copy(tmp_path / "part-0.run0", tmp_path / "part-0.sqlite3")
    out.clear()
    with pytest.raises(InconsistentPartitionsError) as info:
        run_main(flow, epoch_interval=ZERO, recovery_config=config)
    assert str(info.value) == (
        f"Recovery partitions part-0.sqlite3 of 3 in '{tmp_path}' are too old to resume from "
        f"epoch {newest} without data loss; do you have a newer backup of these partitions? "
        f"(flow 'test_df': part-0.sqlite3 committed epoch 0; part-1.sqlite3 kept no history "
        f"before epoch {newest}, part-2.sqlite3 kept no history before epoch {newest}. A longer "
        "backup_interval (-b) keeps more history. To start over instead: python -m "
        f"headrace.recovery delete {tmp_path} --flow-id test_df)"
    )
    assert out == []
    # What the message says to do works: delete the flow's state, and it starts over.
    assert recovery_main(["delete", str(tmp_path), "--flow-id", "test_df", "--yes"]) == 0
    run_main(flow, epoch_interval=ZERO, recovery_config=config)
    assert out == [("a", 4), ("b", 4), ("a", 4), ("b", 5)]


def test_an_older_part_resumes_all_parts_there_while_history_is_kept(tmp_path: Path) -> None:
    # The point of backup_interval: a part restored from an older backup is fine as long
    # as the others still hold their deltas since then; everything resumes at its epoch.
    import shutil

    init_db_dir(tmp_path, 2)
    config = RecoveryConfig(str(tmp_path), backup_interval=timedelta(hours=1))
    ms = timedelta(milliseconds=1)
    items = [
        ("a", 1),
        ("b", 2),
        TestingSource.EOF(),
        ("a", 5),
        ("b", 7),
        TestingSource.EOF(),
        ("a", 9),
        ("b", 9),
    ]
    out: list[Any] = []
    run_main(_keep_max_flow(items, out), epoch_interval=ms, recovery_config=config)
    assert out == [("a", 1), ("b", 2)]
    for i in range(2):
        shutil.copy(tmp_path / f"part-{i}.sqlite3", tmp_path / f"part-{i}.backup")
    out2: list[Any] = []
    run_main(_keep_max_flow(items, out2), epoch_interval=ms, recovery_config=config)
    assert out2 == [("a", 5), ("b", 7)]
    shutil.copy(tmp_path / "part-1.backup", tmp_path / "part-1.sqlite3")
    out3: list[Any] = []
    run_main(_keep_max_flow(items, out3), epoch_interval=ms, recovery_config=config)
    assert out3 == [("a", 5), ("b", 7)]  # the second run again, exactly


def test_a_commit_cut_short_between_parts_resumes_at_the_previous_epoch(tmp_path: Path) -> None:
    # kill -9 in the middle of a commit leaves part 0 at epoch 2 and part 1 at epoch 1.
    from headrace._engine._sqlite_store import SqliteStore

    init_db_dir(tmp_path, 2)
    s = SqliteStore(tmp_path, "f")
    s.start_execution(1, 4)
    s.write_epoch(1, [("st", 0, "k", b"1"), ("st", 1, "j", b"1")])
    s.commit(1, 2)
    s.write_epoch(2, [("st", 0, "k", b"2"), ("st", 1, "j", b"2")])
    with s.files[0].conn() as c:  # the first part's commit only
        s.files[0].set_meta(c, {"committed_epoch": "2"})
    s.close()
    s = SqliteStore(tmp_path, "f")
    assert [p["committed_epoch"] for p in s.parts()] == [2, 1]
    assert s.start_execution(1, 4).committed_epoch == 1
    assert [p["committed_epoch"] for p in s.parts()] == [1, 1]
    assert s.load("st", [0, 1]) == {0: {"k": b"1"}, 1: {"j": b"1"}}
    s.compact(5)
    assert [p["base_epoch"] for p in s.parts()] == [1, 1]  # never past the committed epoch


def test_state_is_spread_over_the_parts(tmp_path: Path) -> None:
    import sqlite3

    init_db_dir(tmp_path, 3)
    items: list[Any] = [(f"k{i}", i) for i in range(60)]
    items += [TestingSource.EOF(), *((f"k{i}", 30) for i in range(60))]
    run_main(_keep_max_flow(items, []), epoch_interval=ZERO, recovery_config=RecoveryConfig(tmp_path))
    groups = []
    for i in range(3):
        with sqlite3.connect(tmp_path / f"part-{i}.sqlite3") as c:
            rows = c.execute(
                "SELECT grp FROM hr_delta WHERE flow='test_df' AND step LIKE "
                "'%max%' UNION SELECT grp FROM hr_base WHERE flow='test_df' AND "
                "step LIKE '%max%'"
            ).fetchall()
        groups.append({int(g) % 3 for (g,) in rows})
    assert groups == [{0}, {1}, {2}]
    out: list[Any] = []
    run_main(_keep_max_flow(items, out), epoch_interval=ZERO, recovery_config=RecoveryConfig(tmp_path))
    assert sorted(out) == sorted((f"k{i}", max(i, 30)) for i in range(60))


def test_files_that_are_not_headrace_parts_are_named(tmp_path: Path) -> None:
    import sqlite3

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "part-0.sqlite3").write_text("hello")
    with pytest.raises(
        RecoveryStoreError,
        match=r"part-0.sqlite3' is not a Headrace recovery "
        r"partition \(file is not a database\)",
    ):
        run_main(_keep_max_flow([], []), recovery_config=RecoveryConfig(tmp_path / "junk"))
    (tmp_path / "bw").mkdir()
    with sqlite3.connect(tmp_path / "bw" / "part-0.sqlite3") as c:  # Bytewax's tables
        c.executescript(
            "CREATE TABLE parts (part_index, part_count); CREATE TABLE snaps (x);CREATE TABLE commits (x);"
        )
    with pytest.raises(RecoveryStoreError, match="it is a Bytewax recovery partition"):
        run_main(_keep_max_flow([], []), recovery_config=RecoveryConfig(tmp_path / "bw"))


def test_flows_share_a_directory_of_parts(tmp_path: Path) -> None:
    init_db_dir(tmp_path, 2)
    config = RecoveryConfig(tmp_path)
    outs = []
    for flow_id in ("one", "two", "one"):
        out: list[Any] = []
        run_main(
            _sum_flow([("a", 1), TestingSource.EOF(), ("a", 1)], out, flow_id),
            epoch_interval=ZERO,
            recovery_config=config,
        )
        outs.append(out)
    assert outs == [[("a", 1)], [("a", 1)], [("a", 2)]]


def test_legacy_single_file_layout_still_resumes(tmp_path: Path) -> None:
    # Headrace before part files kept <dir>/<flow id>.sqlite3 with these tables.
    import sqlite3

    with sqlite3.connect(tmp_path / "resume.sqlite3") as c:
        c.executescript(
            "CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);"
            "CREATE TABLE delta (epoch INTEGER NOT NULL, step TEXT NOT NULL, grp TEXT NOT NULL,"
            " key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (step, grp, epoch, key));"
            "CREATE TABLE base (step TEXT NOT NULL, grp TEXT NOT NULL, key TEXT NOT NULL,"
            " value BLOB NOT NULL, PRIMARY KEY (step, grp, key));"
        )
    items = [("a", 1), ("b", 10), TestingSource.EOF(), ("a", 3), ("b", 20)]
    config = RecoveryConfig(tmp_path)
    outs = []
    for _ in range(2):
        out: list[Any] = []
        run_main(_sum_flow(items, out), epoch_interval=ZERO, recovery_config=config)
        outs.append(out)
    assert outs == [[("a", 1), ("b", 10)], [("a", 4), ("b", 30)]]
    assert sorted(os.listdir(tmp_path)) == ["resume.sqlite3"]
    with pytest.raises(NoPartitionsError):  # another flow there has no state: init first
        run_main(_sum_flow(items, [], "other"), recovery_config=config)


@pytest.mark.timeout(300)
def test_cli_without_parts_fails_on_every_process(tmp_path: Path) -> None:
    from tests.support.servers import free_port

    write_input(tmp_path / "in", files=1, lines=10)
    env = run_env(tmp_path)
    (tmp_path / "empty").mkdir()
    for procs in ("1", "2"):
        res = run_cli(["-p", procs, "-r", str(tmp_path / "empty"), "-s", "0.1"], env)
        assert res.returncode != 0
        assert "NoPartitionsError: No recovery partitions found on any worker" in res.stderr
    # Process 1 alone (process 0 never started) fails at once, not at the startup timeout.
    addrs = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    res = run_cli(
        ["-i", "1", "-a", addrs, "-r", str(tmp_path / "empty"), "-s", "0.1", "--startup-timeout", "600"], env
    )
    assert res.returncode == 1
    assert "NoPartitionsError: No recovery partitions found on any worker" in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_of_a_2_process_run_on_3_parts_is_exactly_once(tmp_path: Path, seed: int) -> None:
    counts = write_input(tmp_path / "in")
    env = run_env(tmp_path, HR_SLOW="0.03")
    init_db_dir(tmp_path / "state", 3)
    rng = random.Random(seed)
    args = ["-p", "2", "-r", str(tmp_path / "state"), "--epoch-interval", "0.1"]
    assert run_with_kills(lambda: launch(args, env), tmp_path / "out", rng) >= 1
    check_output(tmp_path / "out", counts)
    parts = _parts(tmp_path / "state", "recovery_wc")
    assert len({p["committed_epoch"] for p in parts}) == 1
