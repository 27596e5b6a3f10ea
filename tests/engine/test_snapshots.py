"""Kept snapshots and restoring one (issue 26, item 1), on real stores and real processes.

Each test runs on a directory of 3 SQLite parts and on a real redis-server
(the ``location`` fixture). The runs are `python -m headrace.run` of the
recovery word count (`tests.support.runs`), whose DirSink output shows any
line lost or repeated; snapshots are taken and restored with `python -m
headrace.recovery`, also as real processes (killed with SIGKILL in the
fault tests).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

import headrace.operators as op
from headrace._engine import keep_snapshot, kept_snapshots, open_store, prune_snapshots, restore_snapshot
from headrace._engine._snapshots import committed_state
from headrace.dataflow import Dataflow
from headrace.recovery import (
    LostStateError,
    RecoveryConfig,
    RecoveryStoreError,
    SnapshotError,
    StateMismatchError,
    delete_snapshot,
    list_snapshots,
    main,
    take_snapshot,
)
from headrace.recovery import restore_snapshot as restore_at
from headrace.testing import TestingSink, TestingSource, run_main
from tests.support.procs import wait_for_output
from tests.support.runs import ROOT, check_output, launch, run_cli, run_env, write_input
from tests.support.stores import store_at

FLOW = "recovery_wc"  # the word count's flow id, and so its prefix


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """`run_env`, with this tree's runtime first on ``PYTHONPATH`` (whatever is installed)."""
    env = run_env(tmp_path, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "runtime"), str(ROOT)])
    return env


def _committed(location: str, prefix: str = "flow", epochs: int = 3) -> None:
    """Committed epochs of a stateful step ("count") and a source's positions ("lines")."""
    s = store_at(location, prefix)
    s.start_execution(1, 4)
    s.check_flow(prefix, ["count", "lines"])
    for e in range(1, epochs + 1):
        s.write_epoch(
            e,
            [
                ("count", 1, "a", str(e).encode()),
                ("count", 2, "b", b"x"),
                ("lines", "p", "part-0", str(10 * e).encode()),
            ],
        )
        s.commit(e, 1)
    s.release()
    s.close()


EXPECTED = {("count", "1"): {"a": b"3"}, ("count", "2"): {"b": b"x"}, ("lines", "p"): {"part-0": b"30"}}


# ------------------------------------------------------------ the operations


def test_a_snapshot_keeps_the_committed_state_apart_from_the_live_state(location: str) -> None:
    _committed(location)
    s = store_at(location)
    rec = keep_snapshot(s, "three", now=1000.0)
    assert (rec.name, rec.epoch, rec.taken_at, rec.flow_id, rec.steps, rec.key_groups, rec.prefix) == (
        "three",
        3,
        1000.0,
        "flow",
        ("count", "lines"),
        4,
        "flow",
    )
    assert (rec.entries, rec.size) == (3, len("a3") + len("bx") + len("part-030"))
    # More epochs and a compaction change the live state, not the kept one.
    s.start_execution(1, 4)
    s.write_epoch(4, [("count", 1, "a", b""), ("count", 3, "c", b"new")])
    s.commit(4, 1)
    s.compact(4)
    # The reset of the live state keeps kept snapshots.
    s.release()
    s.delete_all()
    assert s.load_meta() is None
    assert [r.name for r in kept_snapshots(s)] == ["three"]
    restore_snapshot(s, "three")
    assert committed_state(s)[1] == EXPECTED
    meta = s.load_meta()
    assert meta is not None and (meta.committed_epoch, meta.base_epoch, meta.key_groups) == (3, 3, 4)
    # The restored store resumes as any store does: its integrity checks pass.
    assert s.start_execution(1, 4).committed_epoch == 3
    assert s.check_flow("flow", ["count", "lines"]) == []
    assert s.load("count", [1, 2]) == {1: {"a": b"3"}, 2: {"b": b"x"}}
    s.write_epoch(4, [("count", 1, "a", b"4")])
    s.commit(4, 1)
    s.release()
    s.close()


def test_a_reset_store_with_kept_snapshots_is_a_first_run(location: str) -> None:
    _committed(location)
    s = store_at(location)
    keep_snapshot(s, "s")
    s.delete_all()
    assert s.start_execution(1, 4).committed_epoch == 0
    assert s.first_run
    assert [r.name for r in kept_snapshots(s)] == ["s"]


def test_names_are_unique_and_checked_and_an_empty_store_has_nothing_to_keep(location: str) -> None:
    s = store_at(location)
    with pytest.raises(SnapshotError, match="holds no committed epoch to keep"):
        keep_snapshot(s, "x")
    _committed(location)
    keep_snapshot(s, "x")
    with pytest.raises(SnapshotError, match="a kept snapshot named 'x' already exists"):
        keep_snapshot(s, "x")
    with pytest.raises(ValueError, match="snapshot name 'a:b' is not allowed"):
        keep_snapshot(s, "a:b")
    with pytest.raises(SnapshotError, match=r"no kept snapshot named 'y' in .* \(kept: 'x'\)"):
        restore_snapshot(s, "y")


def test_retention_by_count_and_age_never_deletes_the_last_one(location: str) -> None:
    _committed(location)
    s = store_at(location)
    for i in range(5):
        keep_snapshot(s, f"s{i}", now=100.0 + i)
    assert prune_snapshots(s, keep=3, now=105.0) == ["s0", "s1"]
    assert [r.name for r in kept_snapshots(s)] == ["s2", "s3", "s4"]
    assert prune_snapshots(s, max_age=2.5, now=105.0) == ["s2"]
    assert prune_snapshots(s, max_age=0.0, keep=1, now=10_000.0) == ["s3"]
    assert [r.name for r in kept_snapshots(s)] == ["s4"]
    assert prune_snapshots(s, keep=1, max_age=0.0, now=10_000.0) == []
    with pytest.raises(ValueError, match="keep must be 1 or more"):
        prune_snapshots(s, keep=0)
    # The data of a pruned snapshot is gone with it.
    assert _snapshot_data(location, "flow") == {kept_snapshots(s)[0].data_id}


def test_restore_is_refused_into_live_state_and_names_mismatching_steps(location: str) -> None:
    _committed(location)
    s = store_at(location)
    keep_snapshot(s, "s")
    with pytest.raises(
        SnapshotError, match="is not empty: a snapshot is restored into a store that holds no"
    ):
        restore_snapshot(s, "s")
    other = store_at(location, "other")
    with pytest.raises(StateMismatchError) as err:
        restore_snapshot(other, "s", source=s, flow=("flow", ["counter", "lines"]))
    assert "holds state of steps 'count' that dataflow 'flow' does not have" in str(err.value)
    with pytest.raises(StateMismatchError, match="belongs to dataflow 'flow', not 'g'"):
        restore_snapshot(other, "s", source=s, flow=("g", ["count", "lines"]))
    assert other.load_meta() is None  # refused: nothing written
    restore_snapshot(other, "s", source=s, flow=("flow", ["counter", "lines"]), allow_dropped=True)
    assert committed_state(other)[1] == {("lines", "p"): {"part-0": b"30"}}


def test_a_restored_snapshot_of_other_steps_is_refused_when_the_flow_starts(location: str) -> None:
    def build(step: str, items: list[Any], out: list[Any]) -> Dataflow:
        flow = Dataflow("f")
        s = op.input("inp", flow, TestingSource(items))
        op.output("out", op.stateful_map(step, s, lambda st, v: ((st or 0) + v,) * 2), TestingSink(out))
        return flow

    run_main(build("sum", [("a", 1)], []), recovery_config=RecoveryConfig(location, prefix="one"))
    take_snapshot(location, "s", "one")
    with pytest.raises(StateMismatchError, match=r"holds state of steps 'f\.sum\.stateful_batch'"):
        restore_at(location, "s", "two", from_prefix="one", flow=build("total", [], []))
    restore_at(location, "s", "two", from_prefix="one")
    config = RecoveryConfig(location, prefix="two")
    with pytest.raises(StateMismatchError, match=r"holds state of steps 'f\.sum\.stateful_batch'"):
        run_main(build("total", [("a", 1), ("a", 5)], []), recovery_config=config)
    out: list[Any] = []
    run_main(build("sum", [("a", 1), ("a", 5)], out), recovery_config=config)
    assert out == [("a", 6)]


def test_the_cli_snapshot_snapshots_and_restore(location: str, capsys: pytest.CaptureFixture[str]) -> None:
    _committed(location)
    assert main(["snapshot", location, "--prefix", "flow", "one"]) == 0
    assert capsys.readouterr().out == (
        "kept snapshot 'one' of dataflow 'flow': epoch 3, 3 entries, 12 bytes, steps count, lines\n"
    )
    assert main(["snapshot", location, "two", "--keep", "1"]) == 0  # the only dataflow there
    assert capsys.readouterr().out.splitlines()[-1] == "deleted kept snapshots one"
    assert main(["snapshots", location]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "EPOCH", "TAKEN", "AT", "SIZE", "STEPS"]
    assert lines[1].split()[:2] == ["two", "3"] and lines[1].split()[-4:] == ["12", "B", "count,", "lines"]
    assert len(lines) == 2
    assert main(["snapshots", location, "--json"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert (record["name"], record["epoch"], record["size"], record["steps"]) == (
        "two",
        3,
        12,
        ["count", "lines"],
    )
    assert main(["restore", location, "two", "--prefix", "copy", "--from-prefix", "flow"]) == 0
    assert capsys.readouterr().out.startswith(
        "restored kept snapshot 'two' of dataflow 'flow' (epoch 3) into 'copy': "
        "its next run resumes from epoch 3"
    )
    assert committed_state(store_at(location, "copy"))[1] == EXPECTED
    assert main(["restore", location, "two", "--prefix", "copy", "--from-prefix", "flow"]) == 1
    assert "is not empty" in capsys.readouterr().err
    assert main(["snapshot", location, "three"]) == 1  # two dataflows now
    assert (
        "holds 2 dataflows ('copy', 'flow'): name the one to snapshot with --prefix"
        in capsys.readouterr().err
    )
    assert main(["snapshots", location, "--prefix", "flow", "--delete", "two"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "deleted kept snapshot 'two'"
    assert list_snapshots(location, "flow") == []
    with pytest.raises(SnapshotError, match="no kept snapshot named 'two'"):
        delete_snapshot(location, "two", "flow")
    with pytest.raises(SystemExit) as usage:
        main(["snapshots", location, "--prefix", "flow", "--keep", "0"])
    assert usage.value.code == 2
    assert "argument --keep: must be 1 or more" in capsys.readouterr().err


# ------------------------------------------------------------ real runs


def _recovery(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace.recovery", *args],
        cwd=ROOT,
        env=_env(Path("/nonexistent")),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _outputs(out: Path) -> dict[str, str]:
    return {f.name: f.read_text() for f in sorted(out.iterdir())}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_snapshot_run_more_restore_resume_gives_the_same_output(tmp_path: Path, location: str) -> None:
    """Run, keep a snapshot, run more input, then restore it and run that input again."""
    counts = write_input(tmp_path / "in", files=2, lines=300)
    env = _env(tmp_path)
    args = ["-r", location, "-s", "0.05", "-b", "0"]
    res = run_cli(args, env)
    assert res.returncode == 0, res.stderr[-2000:]
    check_output(tmp_path / "out", counts)
    snap = _recovery(["snapshot", location, "--prefix", FLOW, "after-first"])
    assert snap.returncode == 0, snap.stderr
    epoch = int(snap.stdout.split("epoch ")[1].split(",")[0])
    # More input: two new files (new partitions), the counts go on.
    more = write_input(tmp_path / "more", files=4, lines=300)
    for f in ("in-2.txt", "in-3.txt"):
        shutil.copy(tmp_path / "more" / f, tmp_path / "in" / f)
    all_counts = _count_words(tmp_path / "in")
    res = run_cli(args, env)
    assert res.returncode == 0, res.stderr[-2000:]
    check_output(tmp_path / "out", all_counts)
    after_more = _outputs(tmp_path / "out")
    # Reset, restore the snapshot, and run again: the sink goes back to the
    # snapshot's positions, and the new files are read again from there.
    reset = _recovery(["delete", location, "--flow-id", FLOW, "--yes"])
    assert reset.returncode == 0, reset.stderr
    rest = _recovery(["restore", location, "after-first", "--prefix", FLOW])
    assert rest.returncode == 0, rest.stderr
    assert f"its next run resumes from epoch {epoch}" in rest.stdout
    res = run_cli(args, env)
    assert res.returncode == 0, res.stderr[-2000:]
    check_output(tmp_path / "out", all_counts)
    assert _outputs(tmp_path / "out") == after_more  # byte for byte
    del more


def _count_words(d: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in d.iterdir():
        for w in f.read_text().split():
            counts[w] = counts.get(w, 0) + 1
    return counts


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_snapshots_taken_while_the_flow_runs_restore_to_exact_output(tmp_path: Path, location: str) -> None:
    """Snapshots under commits every 50 ms and compaction at each: each one is one epoch's state."""
    counts = write_input(tmp_path / "in", files=2, lines=400)
    env = _env(tmp_path, HR_SLOW="0.01")
    args = ["-r", location, "-s", "0.05", "-b", "0", "-p", "2"]
    p = launch(args, env)
    taken: list[int] = []
    for n in (100, 600, 1200):
        wait_for_output(p, tmp_path / "out", n)
        snap = _recovery(["snapshot", location, "--prefix", FLOW, f"at-{n}"])
        if snap.returncode == 0:
            taken.append(n)
        else:
            assert "holds no committed epoch" in snap.stderr, snap.stderr
    _, err = p.communicate(timeout=200)
    assert p.returncode == 0, err[-2000:]
    assert taken, "no snapshot taken while the flow ran"
    final = _outputs(tmp_path / "out")
    for n in taken:
        assert _recovery(["delete", location, "--flow-id", FLOW, "--yes"]).returncode == 0
        rest = _recovery(["restore", location, f"at-{n}", "--prefix", FLOW])
        assert rest.returncode == 0, rest.stderr
        res = run_cli(args, env)
        assert res.returncode == 0, res.stderr[-2000:]
        check_output(tmp_path / "out", counts)
        assert sorted(_outputs(tmp_path / "out").values()) != [] and _lines(tmp_path / "out") == _lines_of(
            final
        )


def _lines(out: Path) -> list[str]:
    return _lines_of(_outputs(out))


def _lines_of(files: dict[str, str]) -> list[str]:
    return sorted(line for text in files.values() for line in text.splitlines())


# ------------------------------------------------------------ kill -9


def _big(location: str, prefix: str = "flow", keys: int = 60_000) -> dict[tuple[str, str], dict[str, bytes]]:
    """One committed epoch of ``keys`` keys over 16 key groups; return its state."""
    s = store_at(location, prefix)
    s.start_execution(1, 16)
    s.check_flow(prefix, ["count"])
    entries = [("count", i % 16, f"key-{i}", b"v" * 40) for i in range(keys)]
    s.write_epoch(1, entries)
    s.commit(1, 1)
    s.release()
    s.close()
    state: dict[tuple[str, str], dict[str, bytes]] = {}
    for step, g, k, v in entries:
        state.setdefault((step, str(g)), {})[k] = v
    return state


def _snapshot_data(location: str, prefix: str) -> set[str]:
    """The data ids of kept-snapshot data at ``location``, named by a record or not."""
    if location.startswith("redis"):
        r = redis.Redis.from_url(location)
        head = f"hr{{{prefix}}}:snap:"
        return {
            k.decode()[len(head) :].split(":")[0] for k in r.scan_iter(match=head.replace("{", "\\{") + "*")
        }
    ids: set[str] = set()
    for part in Path(location).glob("part-*.sqlite3"):
        with sqlite3.connect(part) as c:
            try:
                ids |= {
                    i for (i,) in c.execute("SELECT DISTINCT id FROM hr_snap_data WHERE flow=?", (prefix,))
                }
            except sqlite3.OperationalError:  # no kept snapshot yet: no table
                pass
    return ids


def _killed_after(args: list[str], delay: float) -> int | None:
    """Run ``python -m headrace.recovery ARGS`` and SIGKILL it after ``delay`` s; its exit status."""
    p = subprocess.Popen(
        [sys.executable, "-m", "headrace.recovery", *args],
        cwd=ROOT,
        env=_env(Path("/nonexistent")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        p.wait(delay)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return None
    return p.returncode


def _killed_when(args: list[str], seen: Callable[[], bool]) -> bool:
    """Run ``python -m headrace.recovery ARGS``; SIGKILL it as soon as ``seen()``. Whether it
    was killed (False: it ended first)."""
    p = subprocess.Popen(
        [sys.executable, "-m", "headrace.recovery", *args],
        cwd=ROOT,
        env=_env(Path("/nonexistent")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < deadline:
        if seen():
            p.send_signal(signal.SIGKILL)
            p.wait()
            return True
        time.sleep(0.002)
    p.wait()
    return False


def _restoring(location: str, prefix: str) -> bool:
    """Whether a part of the directory ``location`` has ``prefix``'s restore marker."""
    for part in Path(location).glob("part-*.sqlite3"):
        with sqlite3.connect(part) as c:
            if c.execute("SELECT 1 FROM hr_meta WHERE flow=? AND k='restoring'", (prefix,)).fetchone():
                return True
    return False


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_during_snapshot_never_lists_a_half_written_one(location: str) -> None:
    state = _big(location)
    t0 = time.monotonic()
    done = _recovery(["snapshot", location, "--prefix", "flow", "timed"])
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    # Killed as soon as its first data is written: never listed, its data left behind.
    before = _snapshot_data(location, "flow")
    assert _killed_when(
        ["snapshot", location, "--prefix", "flow", "half"],
        lambda: bool(_snapshot_data(location, "flow") - before),
    )
    s = store_at(location)
    assert [r.name for r in kept_snapshots(s)] == ["timed"]
    assert len(_snapshot_data(location, "flow") - before) == 1
    with pytest.raises(SnapshotError, match="no kept snapshot named 'half'"):
        restore_snapshot(store_at(location, "copy"), "half", source=s)
    # Killed at other moments: listed and whole, or not listed.
    for i, frac in enumerate((0.5, 0.7, 0.8, 0.9, 0.95)):
        name = f"k{i}"
        status = _killed_after(["snapshot", location, "--prefix", "flow", name], took * frac)
        if name in [r.name for r in kept_snapshots(s)]:
            restore_snapshot(store_at(location, f"copy{i}"), name, source=s)
            assert committed_state(store_at(location, f"copy{i}"))[1] == state
        else:
            assert status is None
    # Data no record names is deleted by a later snapshot or prune, once surely not being written.
    prune_snapshots(s, keep=1, now=time.time() + 7200)
    assert _snapshot_data(location, "flow") == {r.data_id for r in kept_snapshots(s)}
    assert len(kept_snapshots(s)) == 1
    s.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_during_restore_is_found_and_a_new_restore_finishes_it(location: str) -> None:
    state = _big(location)
    s = store_at(location)
    keep_snapshot(s, "s")
    t0 = time.monotonic()
    assert _recovery(["restore", location, "s", "--prefix", "timed", "--from-prefix", "flow"]).returncode == 0
    took = time.monotonic() - t0
    redis_store = location.startswith("redis")
    args = ["restore", location, "s", "--from-prefix", "flow", "--prefix"]
    outcomes = []
    # A directory: killed once its first part is written (a Redis restore is one MULTI).
    if not redis_store:
        assert _killed_when([*args, "copy-half"], lambda: _restoring(location, "copy-half"))
    for i, frac in enumerate((0.5, 0.7, 0.85, 0.95)):
        status = _killed_after([*args, f"copy{i}"], took * frac)
        outcomes.append(status)
    for target in ([] if redis_store else ["copy-half"]) + [f"copy{i}" for i in range(4)]:
        why = ""
        try:
            t = store_at(location, target)
            meta = t.start_execution(1, 16)
            outcome = "restored" if meta.committed_epoch == 1 else "empty"
            t.release()
        except RecoveryStoreError as exc:
            why = str(exc)
            assert "did not finish" in why or isinstance(exc, LostStateError), exc
            assert "python -m headrace.recovery delete" in why
            outcome = "half"
            t = open_store(location, target, check=False)
        if target == "copy-half":
            assert outcome == "half"
            assert "the restore of kept snapshot 's' did not finish" in why
        if outcome == "restored":
            assert committed_state(t)[1] == state
            continue
        if outcome == "half" and redis_store:
            pytest.fail("a Redis restore is one transaction: it can't be half done")
        if outcome == "empty":  # started as a first run: reset it, as a user would
            t.delete_all()
        # A new restore finishes what the killed one began (a directory), or does it all.
        t.close()
        t = open_store(location, target, check=False)
        restore_snapshot(t, "s", source=s)
        assert committed_state(t)[1] == state
        t.close()
        assert store_at(location, target).start_execution(1, 16).committed_epoch == 1
    del outcomes
