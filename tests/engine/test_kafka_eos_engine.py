"""The engine's side of exactly-once Kafka output: the `EpochSink` protocol.

No broker here: a sink that records the calls shows that on every worker
``epoch_committed(e)`` comes after the store committed ``e``, between the
partition's snapshots, and before ``close``; that resumed partitions get
the slots they own after a rescale; and that such a sink needs recovery.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import headrace.operators as op
from headrace._engine import execute
from headrace.dataflow import Dataflow
from headrace.errors import BytewaxRuntimeError
from headrace.outputs import DynamicSink, StatelessSinkPartition
from headrace.recovery import RecoveryConfig, init_db_dir
from headrace.testing import TestingSource


class _Log:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[int, str, Any]] = []
        self.resumed: dict[int, dict[str, Any]] = {}

    def add(self, worker: int, what: str, arg: Any = None) -> None:
        with self.lock:
            self.events.append((worker, what, arg))


class _Part(StatelessSinkPartition[int]):
    def __init__(self, log: _Log, worker: int) -> None:
        self.log = log
        self.worker = worker
        self.epoch_items: list[int] = []
        self.committed: list[int] = []

    def resume(self, states: dict[str, Any]) -> None:
        self.log.resumed[self.worker] = states

    def write_batch(self, items: list[int]) -> None:
        self.epoch_items.extend(items)

    def snapshot(self) -> list[int]:
        items, self.epoch_items = self.epoch_items, []
        self.log.add(self.worker, "snapshot", items)
        return items

    def epoch_committed(self, epoch: int) -> None:
        self.log.add(self.worker, "committed", epoch)

    def close(self) -> None:
        self.log.add(self.worker, "close")


class _Sink(DynamicSink[int]):
    commits_with_epochs = True

    def __init__(self, log: _Log) -> None:
        self.log = log

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Part:
        return _Part(self.log, worker_index)


def _flow(log: _Log, items: list[int]) -> Dataflow:
    flow = Dataflow("eos_engine")
    s = op.input("in", flow, TestingSource(items, batch_size=7))
    s = op.redistribute("spread", s)
    op.output("out", s, _Sink(log))
    return flow


def _run(log: _Log, items: list[int], recovery: Path, workers: int) -> None:
    execute(
        _flow(log, items),
        workers_per_process=workers,
        epoch_interval=timedelta(0),
        recovery=RecoveryConfig(str(recovery)),
        metrics=False,
    )


def test_every_worker_hears_each_commit_between_its_snapshots(tmp_path: Path) -> None:
    init_db_dir(tmp_path, 1)
    log = _Log()
    _run(log, list(range(200)), tmp_path, 3)
    written: list[int] = []
    for w in range(3):
        mine = [(what, arg) for wk, what, arg in log.events if wk == w]
        # snapshot, committed, snapshot, committed, ..., close
        assert [what for what, _ in mine] == ["snapshot", "committed"] * ((len(mine) - 1) // 2) + ["close"]
        epochs = [arg for what, arg in mine if what == "committed"]
        assert epochs == list(range(1, len(epochs) + 1))
        written.extend(x for what, arg in mine if what == "snapshot" for x in arg)
        assert log.resumed[w] == {}
    assert sorted(written) == list(range(200))


def test_resumed_partitions_get_the_slots_they_own(tmp_path: Path) -> None:
    init_db_dir(tmp_path, 1)
    _run(_Log(), list(range(50)), tmp_path, 3)
    log = _Log()
    _run(log, list(range(50)), tmp_path, 2)
    # Slot worker-2 (gone) goes to worker 0; each slot's last snapshot was empty.
    assert log.resumed == {0: {"worker-0": [], "worker-2": []}, 1: {"worker-1": []}}
    log = _Log()
    _run(log, list(range(50)), tmp_path, 3)
    # The finished slot was snapshotted as None by worker 0 meanwhile.
    assert log.resumed == {0: {"worker-0": []}, 1: {"worker-1": []}, 2: {"worker-2": None}}


def test_refused_without_recovery() -> None:
    with pytest.raises(BytewaxRuntimeError, match="no recovery configured"):
        execute(_flow(_Log(), [1]), epoch_interval=timedelta(0), metrics=False)
