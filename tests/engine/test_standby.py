"""A standby start waits for the previous execution to release the store (issue 26, item 5).

The operator starts a Dataflow's next pods while the old ones still run
(``HEADRACE_STANDBY_TIMEOUT``): their process 0 takes the store over only
once the old execution released its lease. Real redis-server and SQLite
part files; real processes.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from tests.support.runs import ROOT, check_output, launch, run_env, write_input
from tests.support.stores import store_at


def test_the_lease_holder_is_the_live_execution_until_it_releases(location: str) -> None:
    old = store_at(location, "recovery_wc")
    assert old.lease_holder() == ""
    old.start_execution(1, 4)
    assert old.lease_holder() == old.execution_id
    old.release()
    assert old.lease_holder() == ""


def _env(tmp_path: Path, location: str, timeout: str) -> dict[str, str]:
    # The checkout's runtime first: the processes run this tree's headrace.
    env = run_env(
        tmp_path,
        HEADRACE_STANDBY_TIMEOUT=timeout,
        HEADRACE_RECOVERY=location,
        HEADRACE_LOG_LEVEL="info",
        HEADRACE_POD_NAME="next-0",
    )
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "runtime"), str(ROOT)])
    return env


class _Live:
    """An execution that holds the store: its lease renewed until `stop` releases it."""

    def __init__(self, location: str) -> None:
        self.store = store_at(location, "recovery_wc")
        self.store.start_execution(1, 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(0.5):
            self.store.heartbeat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.store.release()


def test_a_standby_start_runs_once_the_old_execution_released(tmp_path: Path, location: str) -> None:
    counts = write_input(tmp_path / "in", files=2, lines=200)
    live = _Live(location)
    old = live.store
    p = launch([], _env(tmp_path, location, "60"))
    assert p.stderr is not None
    seen = ""
    while "waiting up to 60s for it to stop" not in seen:
        line = p.stderr.readline()
        assert line, f"the run ended without saying it waits: {seen}"
        seen += line
    assert f"standby: execution {old.execution_id} holds" in seen
    assert old.owner() == old.execution_id  # not fenced while it waits
    # It said so, for the operator (a Redis store; a local directory has no operator).
    note = old.standby_note()
    if location.startswith("redis"):
        who, at = note.split()
        assert who == "next-0" and float(at) > 0
        # Apart from the state: no key of the prefix, so no leftover for a first run.
        from headrace._engine._redis_integrity import own_keys

        assert not [k for k in own_keys(old) if "standby" in k]  # type: ignore[arg-type]
    else:
        assert note == ""
    live.stop()  # the old pods stopped at their barrier
    # The word count ends at the end of its files: no signal (one sent as
    # it exits would race its end and kill it with -15).
    _out, err = p.communicate(timeout=120)  # drains the pipes as it waits
    assert p.returncode == 0, err
    check_output(tmp_path / "out", counts)
    assert old.owner() not in ("", old.execution_id)


def test_a_standby_start_fails_when_the_old_execution_never_stops(tmp_path: Path, location: str) -> None:
    write_input(tmp_path / "in", files=1, lines=10)
    live = _Live(location)
    old = live.store
    p = launch([], _env(tmp_path, location, "1"))
    _out, err = p.communicate(timeout=60)
    live.stop()
    assert p.returncode == 1, err
    assert f"error: standby: execution {old.execution_id} still holds the lease of " in err
    assert "after 1s: the previous pods did not stop" in err
    assert old.owner() == old.execution_id
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
