"""Lost state is an error; stored state must match the flow (issue 19, items 3-4).

Real redis-server and SQLite part files; real `python -m headrace.run` processes.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

import headrace.operators as op
from headrace._engine._store import open_store
from headrace.dataflow import Dataflow
from headrace.recovery import LostStateError, RecoveryConfig, StateMismatchError, init_db_dir
from headrace.testing import TestingSink, TestingSource, run_main
from tests.support.procs import wait_for_output
from tests.support.runs import check_output, launch, run_cli, run_env, write_input
from tests.support.servers import RedisServer
from tests.support.stores import store_at

ZERO = timedelta(0)


def _committed(location: str, compact: bool = False) -> None:
    """Three committed epochs of a stateful step and a source's positions."""
    s = store_at(location)
    s.start_execution(1, 4)
    for e in (1, 2, 3):
        s.write_epoch(
            e,
            [
                ("count", 1, "a", str(e).encode()),
                ("count", 2, "b", b"x"),
                ("lines", "p", "part-0", str(10 * e).encode()),
            ],
        )
        s.commit(e, 1)
    if compact:
        s.compact(2)
    s.release()
    s.close()


def _delete(location: str, step: str, epoch: int | None) -> None:
    """Delete a step's state: one epoch's delta (``None``: its compacted base)."""
    if location.startswith("redis"):
        r = redis.Redis.from_url(location)
        name = f"hr{{flow}}:d:{epoch}:{step}:*" if epoch else f"hr{{flow}}:b:{step}:*"
        keys = list(r.scan_iter(match=name.replace("{flow}", "\\{flow\\}")))
        assert keys, name
        r.delete(*keys)
        return
    for part in Path(location).glob("part-*.sqlite3"):
        with sqlite3.connect(part) as c:
            if epoch:
                c.execute("DELETE FROM hr_delta WHERE step=? AND epoch=?", (step, epoch))
            else:
                c.execute("DELETE FROM hr_base WHERE step=?", (step,))


# ------------------------------------------------------------ lost state: the stores


@pytest.mark.parametrize(("step", "epoch"), [("count", 3), ("count", 1), ("lines", 3)])
def test_a_deleted_delta_of_a_committed_epoch_stops_the_resume(location: str, step: str, epoch: int) -> None:
    _committed(location)
    _delete(location, step, epoch)
    with pytest.raises(LostStateError) as err:
        store_at(location).start_execution(1, 4)
    msg = str(err.value)
    assert "Recovery state lost in" in msg and f"epoch {epoch}" in msg
    assert f"step {step!r}" in msg and "committed epoch 3" in msg
    assert "python -m headrace.recovery delete" in msg and "resetStateNonce" in msg


@pytest.mark.parametrize("step", ["count", "lines"])
def test_a_deleted_base_stops_the_resume(location: str, step: str) -> None:
    _committed(location, compact=True)
    _delete(location, step, None)
    with pytest.raises(LostStateError, match=f"compacted base.*{step!r}|{step!r}.*base"):
        store_at(location).start_execution(1, 4)


def test_the_explicit_reset_starts_over(location: str) -> None:
    _committed(location)
    _delete(location, "count", 2)
    with pytest.raises(LostStateError):
        store_at(location).start_execution(1, 4)
    store_at(location).delete_all()
    s = store_at(location)
    assert s.start_execution(1, 4).committed_epoch == 0 and s.first_run


def test_a_deleted_redis_meta_with_other_keys_left_is_not_a_first_run(
    redis_server: RedisServer,
) -> None:
    _committed(redis_server.url)
    r = redis.Redis.from_url(redis_server.url)
    r.delete("hr{flow}:meta")
    for _ in range(2):  # and it stays an error: the failed start erased no evidence
        with pytest.raises(LostStateError, match=r"meta record .* is gone.*hr\{flow\}:"):
            store_at(redis_server.url).start_execution(1, 4)


def test_deleted_sqlite_meta_records_are_not_a_first_run(tmp_path: Path) -> None:
    init_db_dir(tmp_path / "state", 3)
    loc = str(tmp_path / "state")
    _committed(loc)
    with sqlite3.connect(tmp_path / "state" / "part-1.sqlite3") as c:
        c.execute("DELETE FROM hr_meta")
    with pytest.raises(LostStateError, match=r"part-1\.sqlite3 has no meta record of flow 'flow'"):
        store_at(loc).start_execution(1, 4)


def test_redis_emptied_under_a_running_execution_fails_its_next_commit(
    redis_server: RedisServer,
) -> None:
    s = store_at(redis_server.url)
    s.start_execution(1, 4)
    s.write_epoch(1, [("count", 1, "a", b"1")])
    s.commit(1, 1)
    s.write_epoch(2, [("count", 1, "a", b"2")])
    redis.Redis.from_url(redis_server.url).flushall()
    with pytest.raises(LostStateError, match="finds no meta record any more"):
        s.commit(2, 1)
    with pytest.raises(LostStateError, match="finds no meta record any more"):
        s.write_epoch(3, [("count", 1, "a", b"3")])


def test_a_key_evicted_under_a_running_execution_fails_its_next_commit(
    redis_server: RedisServer,
) -> None:
    s = store_at(redis_server.url)
    s.start_execution(1, 4)
    s.write_epoch(1, [("count", 1, "a", b"1"), ("lines", "p", "part-0", b"7")])
    s.commit(1, 1)
    redis.Redis.from_url(redis_server.url).delete("hr{flow}:d:1:lines:p")
    s.write_epoch(2, [("count", 1, "a", b"2")])
    with pytest.raises(LostStateError, match=r"hr\{flow\}:d:1:lines:p \(partition positions"):
        s.commit(2, 1)


def test_a_store_restored_to_an_older_epoch_fails_the_next_commit(location: str) -> None:
    s = store_at(location)
    s.start_execution(1, 4)
    s.write_epoch(1, [("count", 1, "a", b"1")])
    s.commit(1, 1)
    # As if the store came back from an older copy: epoch 1 not committed.
    if location.startswith("redis"):
        redis.Redis.from_url(location).hset("hr{flow}:meta", "committed_epoch", "0")
    else:
        for part in Path(location).glob("part-*.sqlite3"):
            with sqlite3.connect(part) as c:
                c.execute("UPDATE hr_meta SET v='0' WHERE k='committed_epoch'")
    s.write_epoch(2, [("count", 1, "a", b"2")])
    with pytest.raises(LostStateError, match="committed epoch 1, but the store now says 0"):
        s.commit(2, 1)


def test_state_of_an_older_headrace_gets_a_manifest_at_its_next_start(
    redis_server: RedisServer,
) -> None:
    _committed(redis_server.url)
    r = redis.Redis.from_url(redis_server.url)
    r.hdel("hr{flow}:meta", "manifest", "n:1", "f:1", "n:2", "f:2", "n:3", "f:3")
    s = store_at(redis_server.url)
    assert s.start_execution(1, 4).committed_epoch == 3  # counted, not refused
    s.release()
    r.delete("hr{flow}:d:2:count:1")
    with pytest.raises(LostStateError, match="epoch 2"):
        store_at(redis_server.url).start_execution(1, 4)


# ------------------------------------------------------------ Redis settings


def _set(server: RedisServer, **config: str) -> None:
    r = redis.Redis.from_url(server.url)
    for k, v in config.items():
        r.config_set(k.replace("_", "-"), v)


@pytest.mark.timeout(120)
def test_an_evicting_redis_is_refused_unless_allowed(tmp_path: Path, redis_server: RedisServer) -> None:
    write_input(tmp_path / "in", files=1, lines=20)
    _set(redis_server, maxmemory_policy="allkeys-lru")
    env = run_env(tmp_path)
    res = run_cli(["-r", redis_server.url, "-s", "0.1"], env)
    assert res.returncode == 1
    assert "has maxmemory-policy allkeys-lru" in res.stderr
    assert "--allow-evicting-redis" in res.stderr and "noeviction" in res.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    env["HEADRACE_ALLOW_EVICTING_REDIS"] = "1"
    res = run_cli(["-r", redis_server.url, "-s", "0.1"], env)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.timeout(120)
def test_no_persistence_warns_once_and_a_first_run_says_so(tmp_path: Path, redis_server: RedisServer) -> None:
    counts = write_input(tmp_path / "in", files=2, lines=50)
    _set(redis_server, save="", appendonly="no")
    res = run_cli(["-p", "2", "-r", redis_server.url, "-s", "0.1"], run_env(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr.count("has no persistence") == 1, res.stderr
    assert res.stderr.count("first run of dataflow 'recovery_wc'") == 1, res.stderr
    check_output(tmp_path / "out", counts)
    # A resume is not a first run.
    res = run_cli(["-r", redis_server.url, "-s", "0.1"], run_env(tmp_path))
    assert res.returncode == 0 and "first run" not in res.stderr


@pytest.mark.timeout(120)
def test_a_first_run_on_a_directory_says_so(tmp_path: Path) -> None:
    write_input(tmp_path / "in", files=1, lines=10)
    init_db_dir(tmp_path / "state", 2)
    res = run_cli(["-r", str(tmp_path / "state"), "-s", "0.1"], run_env(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("first run of dataflow 'recovery_wc'") == 1


# ------------------------------------------------------------ lost state: real runs


@pytest.mark.timeout(180)
def test_redis_flushed_mid_run_stops_the_run_and_the_resume_is_refused_until_reset(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    counts = write_input(tmp_path / "in", files=2, lines=500)
    env = run_env(tmp_path, HR_SLOW="0.02")
    args = ["-p", "2", "-r", redis_server.url, "--epoch-interval", "0.1"]
    p = launch(args, env)
    wait_for_output(p, tmp_path / "out", 200)
    assert p.poll() is None, "the run ended before the fault"
    redis.Redis.from_url(redis_server.url).flushall()
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1
    assert "Recovery state lost" in err and "finds no meta record any more" in err, err[-3000:]
    # A restart that saw the dataflow commit says so, and an empty Redis is refused.
    r = run_cli(["-r", redis_server.url, "-s", "0.1", "--expect-epoch", "1"], env)
    assert r.returncode == 1
    assert "LostStateError: Recovery state lost" in r.stderr
    assert "the store holds no committed epoch of it" in r.stderr
    assert not (tmp_path / "out").exists() or "python -m headrace.recovery delete" in r.stderr
    # Without it, Redis alone can't tell an emptied store from a new one: a first run.
    r = run_cli(["-r", redis_server.url, "-s", "0.1"], env)
    assert r.returncode == 0
    assert "first run" in r.stderr
    del counts


@pytest.mark.timeout(180)
@pytest.mark.parametrize("step", ["recovery_wc.out", "recovery_wc.lines", "recovery_wc.count.stateful_batch"])
def test_deleted_state_of_a_real_run_is_named_at_resume(
    tmp_path: Path, redis_server: RedisServer, step: str
) -> None:
    write_input(tmp_path / "in", files=2, lines=100)
    env = run_env(tmp_path)
    res = run_cli(["-r", redis_server.url, "-s", "0.05"], env)
    assert res.returncode == 0, res.stderr[-2000:]
    r = redis.Redis.from_url(redis_server.url)
    keys = [
        k
        for k in r.scan_iter(match="hr\\{recovery_wc\\}:*")
        if k.decode().split(":")[-2] == step and k.decode().split(":")[1] in ("b", "d")
    ]
    assert keys
    r.delete(*keys)
    res = run_cli(["-r", redis_server.url, "-s", "0.05"], env)
    assert res.returncode == 1
    assert "LostStateError: Recovery state lost" in res.stderr
    assert keys[0].decode() in res.stderr or f"step {step!r}" in res.stderr
    assert "python -m headrace.recovery delete" in res.stderr


# ------------------------------------------------------------ state must match the flow


def _flow(items: list[Any], out: list[Any], step: str = "sum", flow_id: str = "f") -> Dataflow:
    flow = Dataflow(flow_id)
    s = op.input("inp", flow, TestingSource(items))
    s = op.stateful_map(step, s, lambda st, v: ((st or 0) + v, (st or 0) + v))
    op.output("out", s, TestingSink(out))
    return flow


def _items() -> list[Any]:
    """Items for one test: its ABORT fires once (at the first run), not at the resume."""
    return [("a", 1), ("b", 10), ("a", 2), TestingSource.ABORT(), ("a", 3), ("b", 20)]


def test_a_renamed_stateful_step_is_refused_naming_it_then_allowed(location: str) -> None:
    items = _items()
    out: list[Any] = []
    run_main(_flow(items, out), epoch_interval=ZERO, recovery_config=RecoveryConfig(location))
    assert out == [("a", 1), ("b", 10), ("a", 3)]
    out = []
    with pytest.raises(StateMismatchError) as err:
        run_main(
            _flow(items, out, step="total"), epoch_interval=ZERO, recovery_config=RecoveryConfig(location)
        )
    msg = str(err.value)
    assert "holds state of steps 'f.sum.stateful_batch' that dataflow 'f' does not have" in msg
    assert "'f.total.stateful_batch'" in msg and "--allow-dropped-state" in msg
    assert out == []
    config = RecoveryConfig(location, allow_dropped_state=True)
    run_main(_flow(items, out, step="total"), epoch_interval=ZERO, recovery_config=config)
    # The source resumes after its committed position; the new step starts empty.
    assert out == [("a", 3), ("b", 20)]
    # The old state is gone for good: the old step id now starts empty too.
    out = []
    run_main(
        _flow(items, out),
        epoch_interval=ZERO,
        recovery_config=RecoveryConfig(location, allow_dropped_state=True),
    )
    assert out == []  # input ended: nothing more to read
    assert store_at(location).summary() == {} or "f.sum" not in open_store(location, "f").summary()


def _committed_epoch(location: str, prefix: str = "f") -> int:
    meta = open_store(location, prefix).load_meta()
    assert meta is not None
    return meta.committed_epoch


def test_expect_epoch_refuses_a_store_that_lost_everything_or_went_back(location: str) -> None:
    items = _items()
    out: list[Any] = []
    run_main(_flow(items, out), epoch_interval=ZERO, recovery_config=RecoveryConfig(location))
    assert out == [("a", 1), ("b", 10), ("a", 3)]
    seen = _committed_epoch(location)
    assert seen >= 1

    # A store older than what a supervisor saw committed: refused, nothing written.
    out = []
    with pytest.raises(LostStateError) as err:
        run_main(
            _flow(items, out),
            epoch_interval=ZERO,
            recovery_config=RecoveryConfig(location, expect_epoch=seen + 1),
        )
    msg = str(err.value)
    assert f"the dataflow committed epoch {seen + 1}, but the store's latest committed epoch is {seen}" in msg
    assert "python -m headrace.recovery delete" in msg and "resetStateNonce" in msg
    assert out == []

    # The epoch it holds, or an older one: the resume goes on, exactly once.
    run_main(
        _flow(items, out), epoch_interval=ZERO, recovery_config=RecoveryConfig(location, expect_epoch=seen)
    )
    assert out == [("a", 6), ("b", 30)]

    # The store lost everything: without the expectation it would be a first run.
    seen = _committed_epoch(location)
    assert open_store(location, "f").delete_all() > 0
    out = []
    with pytest.raises(LostStateError, match="the store holds no committed epoch of it"):
        run_main(
            _flow(items, out),
            epoch_interval=ZERO,
            recovery_config=RecoveryConfig(location, expect_epoch=seen),
        )
    assert out == []
    run_main(_flow(items, out), epoch_interval=ZERO, recovery_config=RecoveryConfig(location))
    assert out == [("a", 1), ("b", 10), ("a", 3), ("a", 6), ("b", 30)]


def test_expect_epoch_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="expect_epoch must not be negative; got -1"):
        RecoveryConfig("./state", expect_epoch=-1)


def test_a_new_stateful_step_starts_empty(location: str) -> None:
    items = _items()
    out: list[Any] = []
    run_main(_flow(items, out), epoch_interval=ZERO, recovery_config=RecoveryConfig(location))

    def grown(items: list[Any], out: list[Any]) -> Dataflow:
        flow = Dataflow("f")
        s = op.input("inp", flow, TestingSource(items))
        s = op.stateful_map("sum", s, lambda st, v: ((st or 0) + v, (st or 0) + v))
        s = op.stateful_map("count", s, lambda st, v: ((st or 0) + 1, (v, (st or 0) + 1)))
        op.output("out", s, TestingSink(out))
        return flow

    out = []
    run_main(grown(items, out), epoch_interval=ZERO, recovery_config=RecoveryConfig(location))
    assert out == [("a", (6, 1)), ("b", (30, 1))]


def test_another_flows_prefix_is_refused(location: str) -> None:
    items = _items()
    out: list[Any] = []
    run_main(
        _flow(items, out), epoch_interval=ZERO, recovery_config=RecoveryConfig(location, prefix="shared")
    )
    other: list[Any] = []
    with pytest.raises(StateMismatchError, match="belongs to dataflow 'f', not 'g'"):
        run_main(
            _flow(items, other, flow_id="g"),
            epoch_interval=ZERO,
            recovery_config=RecoveryConfig(location, prefix="shared"),
        )
    assert other == []


@pytest.mark.timeout(180)
def test_cli_renamed_step_refused_then_allowed_with_exact_output(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    counts = write_input(tmp_path / "in", files=2, lines=100)
    env = run_env(tmp_path)
    res = run_cli(["-r", redis_server.url, "-s", "0.05"], env)
    assert res.returncode == 0, res.stderr[-2000:]
    check_output(tmp_path / "out", counts)
    # The same store under a flow whose stateful step has another id.
    env_renamed = {**env, "HR_COUNT_STEP": "counter"}
    res = run_cli(["-r", redis_server.url, "-s", "0.05"], env_renamed)
    assert res.returncode == 1
    assert "StateMismatchError" in res.stderr and "'recovery_wc.count.stateful_batch'" in res.stderr
    res = run_cli(["-r", redis_server.url, "-s", "0.05", "--allow-dropped-state"], env_renamed)
    assert res.returncode == 0, res.stderr[-2000:]
    check_output(tmp_path / "out", counts)  # input was done: nothing repeated, nothing lost
