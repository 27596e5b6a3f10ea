"""Recovery on a real Redis Cluster (3 primaries, 3 replicas): sharding, atomic epochs, failover.

Every test talks to real ``redis-server --cluster-enabled yes`` processes
(`tests.support.redis_cluster`); the crash tests kill real worker processes
and real Redis nodes with SIGKILL. All slow: a cluster takes seconds to form.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from redis.cluster import RedisCluster as Client

import headrace.operators as op
from headrace._engine._store import PARTS, Entry, RedisClusterStore, Store, open_store
from headrace.dataflow import Dataflow
from headrace.recovery import FencedError, LostStateError, RecoveryConfig
from headrace.testing import TestingSink, TestingSource, run_main
from tests.support.procs import wait_for_output
from tests.support.redis_cluster import RedisCluster
from tests.support.runs import ROOT, check_output, launch, run_env, run_rescaled, run_with_kills, write_input

pytestmark = pytest.mark.slow

FLOW = "recovery_wc"  # the prefix of `tests.support.flows.recovery_flows.running_counts`


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def _client(cluster: RedisCluster) -> Client:
    return Client(host="127.0.0.1", port=cluster.ports[0])


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # this checkout's runtime first: the processes must run the code under test
    return run_env(tmp_path, PYTHONPATH=os.pathsep.join([str(ROOT / "runtime"), str(ROOT)]), **extra)


def _keys(cluster: RedisCluster, prefix: str) -> list[str]:
    return sorted(k.decode() for k in _client(cluster).scan_iter(match=f"hr{{{prefix}*", count=1000))


def _two_epochs(
    cluster: RedisCluster, steps: list[str], first: list[Entry], second: list[Entry]
) -> tuple[str, Store]:
    """A store under a new prefix that committed ``first`` as epoch 1 and ``second`` as 2, then compacted 1.

    Its execution (one worker, 16 key groups, ``steps``) still holds the store.
    """
    prefix = _prefix()
    s = open_store(cluster.url, prefix, retry_for=5.0)
    s.start_execution(1, 16)
    s.check_flow(prefix, steps)
    s.write_epoch(1, first)
    s.commit(1, 1)
    s.write_epoch(2, second)
    s.commit(2, 1)
    s.compact(1)
    return prefix, s


# ------------------------------------------------------------ the store


def test_state_is_sharded_by_key_group_and_resumes_exactly(redis_cluster: RedisCluster) -> None:
    prefix = _prefix()
    s = open_store(redis_cluster.url, prefix, retry_for=5.0)
    assert isinstance(s, RedisClusterStore)
    s.start_execution(worker_count=2, key_groups=64)
    s.write_epoch(1, [("st", g, f"k{g}", b"1") for g in range(64)] + [("src", PARTS, "part-0", b"10")])
    s.commit(1, 1)
    s.write_epoch(2, [("st", 3, "k3", b"2"), ("st", 4, "k4", b""), ("src", PARTS, "part-1", b"7")])
    s.commit(2, 1)
    s.compact(2)
    want = {g: {f"k{g}": b"2" if g == 3 else b"1"} for g in range(64) if g != 4}
    assert s.load("st", range(64)) == want
    assert s.load("src", [PARTS]) == {PARTS: {"part-0": b"10", "part-1": b"7"}}
    keys = _keys(redis_cluster, prefix)
    # each key group under its own hash tag; the commit record in the prefix's own slot
    assert f"hr{{{prefix}:g3}}:b:st:3" in keys and f"hr{{{prefix}}}:meta" in keys
    assert not any(k.startswith(f"hr{{{prefix}:g4}}") for k in keys), keys  # dropped, compacted
    nodes = {redis_cluster.primary_of(k) for k in keys}
    assert nodes == set(redis_cluster.primaries())  # spread over all three primaries
    s.release()
    again = open_store(redis_cluster.url, prefix, retry_for=5.0)
    assert again.start_execution(3, 64).committed_epoch == 2
    assert again.load("st", range(64)) == want
    assert again.summary()["st"] == {"keys": 63, "bytes": sum(len(f"k{g}") + 1 for g in want), "groups": 63}
    n = len(_keys(redis_cluster, prefix))
    assert again.delete_all() == n
    assert _keys(redis_cluster, prefix) == []


def test_an_epoch_without_its_commit_record_is_ignored_and_dropped(redis_cluster: RedisCluster) -> None:
    prefix = _prefix()
    s = open_store(redis_cluster.url, prefix, retry_for=5.0)
    s.start_execution(1, 8)
    s.write_epoch(1, [("st", 1, "a", b"1")])
    s.commit(1, 1)
    # a worker wrote epoch 2 on every slot, then everything was killed before the commit
    s.write_epoch(2, [("st", 1, "a", b"2"), ("st", 2, "b", b"2"), ("src", PARTS, "p0", b"9")])
    s.release()
    r = open_store(redis_cluster.url, prefix, retry_for=5.0)
    assert r.start_execution(1, 8).committed_epoch == 1
    assert r.load("st", range(8)) == {1: {"a": b"1"}}
    assert r.load("src", [PARTS]) == {}
    assert not [k for k in _keys(redis_cluster, prefix) if ":d:2~" in k]  # dropped at the start
    # the next run writes epoch 2 afresh: nothing of the dead one's epoch 2 comes back
    r.write_epoch(2, [("st", 2, "c", b"3")])
    r.commit(2, 1)
    assert r.load("st", range(8)) == {1: {"a": b"1"}, 2: {"c": b"3"}}
    r.delete_all()


def test_a_fenced_execution_writes_nothing_a_commit_names(redis_cluster: RedisCluster) -> None:
    prefix = _prefix()
    old = open_store(redis_cluster.url, prefix, retry_for=5.0)
    old.start_execution(1, 8)
    old.write_epoch(1, [("st", 1, "a", b"1")])
    old.commit(1, 1)
    old.release()
    new = open_store(redis_cluster.url, prefix, retry_for=5.0)
    new.start_execution(1, 8)
    with pytest.raises(FencedError, match="was fenced off Redis Cluster at"):
        old.write_epoch(2, [("st", 1, "a", b"zombie")])
    new.write_epoch(2, [("st", 1, "b", b"2")])
    new.commit(2, 1)
    assert new.load("st", [1]) == {1: {"a": b"1", "b": b"2"}}
    new.delete_all()


def test_a_compaction_cut_short_is_finished_by_the_next_start(redis_cluster: RedisCluster) -> None:
    prefix = _prefix()
    s = open_store(redis_cluster.url, prefix, retry_for=5.0)
    assert isinstance(s, RedisClusterStore)
    s.start_execution(1, 8)
    s.write_epoch(1, [("st", 1, "a", b"1"), ("st", 1, "b", b"1"), ("st", 2, "c", b"1")])
    s.commit(1, 1)
    s.write_epoch(2, [("st", 1, "a", b""), ("st", 1, "b", b""), ("st", 2, "d", b"2")])
    s.commit(2, 1)
    s.compact(1)
    # epoch 2's folds ran on their slots, but the process died before recording them
    c = _client(redis_cluster)
    c.hset(f"hr{{{prefix}}}:meta", "compacting", "2")
    c.delete(f"hr{{{prefix}:g1}}:b:st:1")
    c.hset(f"hr{{{prefix}:g2}}:b:st:2", "d", b"2")
    s.release()
    r = open_store(redis_cluster.url, prefix, retry_for=5.0)
    meta = r.start_execution(1, 8)
    assert (meta.committed_epoch, r.load_meta().base_epoch) == (2, 2)  # type: ignore[union-attr]
    assert r.load("st", range(8)) == {2: {"c": b"1", "d": b"2"}}
    r.write_epoch(3, [("st", 5, "e", b"3")])
    r.commit(3, 1)  # the manifest checks out
    r.delete_all()


def test_a_flushed_primary_is_lost_state_naming_the_keys(redis_cluster: RedisCluster) -> None:
    prefix = _prefix()
    s = open_store(redis_cluster.url, prefix, retry_for=5.0)
    s.start_execution(1, 64)
    s.write_epoch(1, [("st", g, "k", b"1") for g in range(64)])
    s.commit(1, 1)
    s.release()
    # delete what one primary holds of it (as FLUSHALL of that primary would)
    meta_node = redis_cluster.primary_of(f"hr{{{prefix}}}:meta")
    other = next(p for p in redis_cluster.primaries() if p != meta_node)
    gone = [k for k in _keys(redis_cluster, prefix) if redis_cluster.primary_of(k) == other]
    assert gone
    _client(redis_cluster).delete(*gone)
    r = open_store(redis_cluster.url, prefix, retry_for=5.0)
    with pytest.raises(LostStateError) as err:
        r.start_execution(1, 64)
    text = str(err.value)
    assert text.startswith(f"Recovery state lost in Redis Cluster at {redis_cluster.url} (prefix {prefix!r})")
    assert "committed epoch 1" in text and f"missing {sorted(gone)[0]} (state of step 'st', key group" in text
    r.delete_all()


def test_kept_snapshots_on_the_cluster_restore_exactly(redis_cluster: RedisCluster) -> None:
    from headrace.recovery import RecoveryStoreError, list_snapshots, restore_snapshot, take_snapshot

    prefix, s = _two_epochs(
        redis_cluster,
        ["st", "src"],
        [("st", g, f"k{g}", b"1") for g in range(16)] + [("src", PARTS, "part-0", b"5")],
        [("st", 2, "k2", b""), ("st", 3, "x", b"2"), ("src", PARTS, "part-1", b"6")],
    )
    s.release()
    want = {g: {f"k{g}": b"1"} for g in range(16) if g != 2}
    want[3]["x"] = b"2"
    rec = take_snapshot(redis_cluster.url, "before", prefix)
    assert (rec.epoch, [k.name for k in list_snapshots(redis_cluster.url, prefix)]) == (2, ["before"])
    with pytest.raises(RecoveryStoreError, match="is not empty"):
        restore_snapshot(redis_cluster.url, "before", prefix)
    s.delete_all()  # the reset keeps kept snapshots
    # a restore killed halfway: marked, and every start refuses until it is run again
    _client(redis_cluster).hset(f"hr{{{prefix}}}:meta", "restoring", "before")
    _client(redis_cluster).hset(f"hr{{{prefix}:g7}}:b:st:7", "junk", b"1")
    r = open_store(redis_cluster.url, prefix, retry_for=5.0)
    with pytest.raises(RecoveryStoreError, match="the restore of kept snapshot 'before' did not finish"):
        r.start_execution(1, 16)
    assert restore_snapshot(redis_cluster.url, "before", prefix).epoch == 2
    assert r.start_execution(2, 16).committed_epoch == 2
    assert r.load("st", range(16)) == want
    assert r.load("src", [PARTS]) == {PARTS: {"part-0": b"5", "part-1": b"6"}}
    r.write_epoch(3, [("st", 9, "y", b"3")])
    r.commit(3, 1)  # the restored base's manifest checks out
    r.compact(3)
    assert r.load("st", [9]) == {9: {"k9": b"1", "y": b"3"}}
    r.delete_all()


def test_dropped_state_of_a_removed_step_goes_from_every_slot(redis_cluster: RedisCluster) -> None:
    from headrace.recovery import StateMismatchError

    prefix, s = _two_epochs(
        redis_cluster,
        ["old", "kept"],
        [("old", g, "k", b"1") for g in range(16)] + [("kept", 2, "k", b"2")],
        [("old", 5, "j", b"2")],
    )
    with pytest.raises(StateMismatchError, match="holds state of steps 'old'"):
        s.check_flow(prefix, ["kept"])
    assert s.check_flow(prefix, ["kept"], allow_dropped=True) == ["old"]
    assert not [k for k in _keys(redis_cluster, prefix) if ":old:" in k]
    s.write_epoch(3, [("kept", 2, "k", b"3")])
    s.commit(3, 1)  # the manifest was rebuilt without the dropped keys
    s.release()
    r = open_store(redis_cluster.url, prefix, retry_for=5.0)
    assert r.start_execution(1, 16).committed_epoch == 3
    assert (r.load("old", range(16)), r.load("kept", [2])) == ({}, {2: {"k": b"3"}})
    r.delete_all()


def test_cluster_urls_are_validated() -> None:
    for url, words in [
        ("redis+cluster://h/0", "'h' is not HOST:PORT"),
        ("redis+cluster://h:7000/2", "database 0 only"),
        ("redis+cluster://h:7000/0?x=1", "no query options"),
    ]:
        with pytest.raises(ValueError, match=words):
            RecoveryConfig(url)
    assert RecoveryConfig("redis+cluster://a:7000,b:7001/0").is_redis


def test_in_process_resume_on_the_cluster_is_exact(redis_cluster: RedisCluster) -> None:
    items = [("a", 1), ("b", 2), TestingSource.ABORT(), ("a", 3), ("b", 4)]
    config = RecoveryConfig(redis_cluster.url, prefix=_prefix())

    def run() -> list[tuple[str, int]]:
        flow = Dataflow("cluster_sum")
        s = op.input("inp", flow, TestingSource(items))
        s = op.stateful_map("sum", s, lambda st, v: ((st or 0) + v,) * 2)
        out: list[tuple[str, int]] = []
        op.output("out", s, TestingSink(out))
        run_main(flow, epoch_interval=timedelta(0), recovery_config=config)
        return out

    assert run() == [("a", 1), ("b", 2)]
    assert run() == [("a", 4), ("b", 6)]


# ------------------------------------------------------------ real processes


@pytest.mark.timeout(300)
def test_kill_9_of_workers_then_restart_is_exactly_once(tmp_path: Path, redis_cluster: RedisCluster) -> None:
    counts = write_input(tmp_path / "in")
    env = _env(tmp_path, HR_SLOW="0.03", HEADRACE_RECOVERY_PREFIX=_prefix())
    rng = random.Random(7)
    args = ["-p", "2", "-r", redis_cluster.url, "--epoch-interval", "0.1"]
    assert run_with_kills(lambda: launch(args, env), tmp_path / "out", rng) >= 1
    check_output(tmp_path / "out", counts)


@pytest.mark.timeout(300)
def test_rescale_2_3_1_on_the_cluster(tmp_path: Path, redis_cluster: RedisCluster) -> None:
    counts = write_input(tmp_path / "in")
    env = _env(tmp_path, HR_SLOW="0.02", HEADRACE_RECOVERY_PREFIX=_prefix())
    run_rescaled(redis_cluster.url, env, tmp_path / "out")
    check_output(tmp_path / "out", counts)


@pytest.mark.timeout(300)
def test_a_primary_killed_fails_over_and_the_run_is_exactly_once(
    tmp_path: Path, own_redis_cluster: RedisCluster
) -> None:
    cluster = own_redis_cluster
    counts = write_input(tmp_path / "in")
    env = _env(tmp_path, HR_SLOW="0.03")
    args = ["-p", "2", "-r", cluster.url, "--epoch-interval", "0.1", "--recovery-retry", "30"]
    p = launch(args, env)
    wait_for_output(p, tmp_path / "out", 150)
    assert p.poll() is None, "the run ended before a primary could be killed"
    primary = cluster.primary_of(f"hr{{{FLOW}}}:meta")  # the commit record's primary
    replica = cluster.replica_of(primary)
    cluster.kill(primary)
    cluster.wait_promoted(replica)
    for _attempt in range(3):
        _, err = p.communicate(timeout=120)
        if p.returncode == 0:
            break
        p = launch(args, env)  # the run gave up during the failover: resume it
    else:
        pytest.fail(f"the dataflow never completed: {err[-2000:]}")
    check_output(tmp_path / "out", counts)


@pytest.mark.timeout(300)
def test_a_primary_lost_with_its_replica_is_a_clear_error(
    tmp_path: Path, own_redis_cluster: RedisCluster
) -> None:
    cluster = own_redis_cluster
    write_input(tmp_path / "in")
    env = _env(tmp_path, HR_SLOW="0.02")
    args = ["-r", cluster.url, "--epoch-interval", "0.1", "--recovery-retry", "5"]
    p = launch(args, env)
    wait_for_output(p, tmp_path / "out", 100)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err[-2000:]
    meta_node = cluster.primary_of(f"hr{{{FLOW}}}:meta")
    victim = next(q for q in cluster.primaries() if q != meta_node)
    cluster.cli(victim, "FLUSHALL")  # the primary and (replicated) its replica lose everything
    deadline = time.monotonic() + 10
    while cluster.cli(cluster.replica_of(victim), "DBSIZE").strip() != "0" and time.monotonic() < deadline:
        time.sleep(0.05)
    p = launch(args, env)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1
    assert "LostStateError: Recovery state lost in Redis Cluster at" in err, err[-2000:]
    assert f"missing hr{{{FLOW}:g" in err and "python -m headrace.recovery delete" in err, err[-2000:]
