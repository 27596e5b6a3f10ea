"""Restore that builds a key's logic at its first use (`StatefulRun.restore`, ``resting``).

A resumed `stateful_map` keeps its restored keys' pickled states and builds
a key's logic only when an item reaches the key. These tests check that
nothing can tell: the key's first item (alone or among others, in
Bytewax's key order), end of input, snapshots and compaction of a resumed
run that never touched the key, a rescale that moves key groups, a ttl
(restored keys expire on time, in order across key groups), and steps
whose logic must still be built at restore (an `on_eof`, a user's
builder; timers: `_stateful_run._builds_later`). One thing does change:
a state that can't be unpickled stops the run, with the same error, at
its key's first item instead of at the start.

The dataflow runs use real stores: a directory of SQLite parts and a real
redis-server (the `location` fixture); the last tests drive the step itself.
"""

from __future__ import annotations

import pickle
from datetime import timedelta
from typing import Any

import pytest

import headrace.operators as op
from headrace._engine._hash import key_group
from headrace._engine._plan import CoreStep
from headrace._engine._stateful_run import StatefulRun
from headrace.dataflow import Dataflow
from headrace.errors import BytewaxRuntimeError
from headrace.operators._stateful import _map_logic
from headrace.recovery import RecoveryConfig
from headrace.testing import TestingSink, TestingSource, cluster_main, run_main
from tests.support.stores import store_at

pytestmark = pytest.mark.timeout(120)

ZERO = timedelta(0)
KEYS = [f"k{i:02d}" for i in range(40)]


def _sum(state: int | None, v: int) -> tuple[int | None, int]:
    total = (state or 0) + v
    return (None if total == 0 else total), total


def _sum_flow(items: list[Any], out: list[Any], flow_id: str, batch_size: int = 1, **kw: Any) -> Dataflow:
    flow = Dataflow(flow_id)
    s = op.input("inp", flow, TestingSource(items, batch_size))
    s = op.stateful_map("sum", s, _sum, **kw)
    op.output("out", s, TestingSink(out))
    return flow


def _stored(location: str, flow_id: str = "lazy") -> dict[str, Any]:
    """The committed state of ``flow_id``'s step ``sum``: key -> unpickled state."""
    store = store_at(location, flow_id)
    meta = store.load_meta()
    assert meta is not None
    state = store.load(f"{flow_id}.sum.stateful_batch", range(meta.key_groups))
    store.close()
    return {k: pickle.loads(v) for group in state.values() for k, v in group.items()}


class Script:
    """Runs of one dataflow, each resuming where the last stopped: the input grows by each run's items.

    Each run's items end with an ABORT (the run stops there, its state
    committed) or an EOF; the next run passes over it, as a restart does.
    """

    def __init__(self, location: str, flow_id: str = "lazy", batch_size: int = 1, **config: Any) -> None:
        self.config = RecoveryConfig(location, **config)
        self.flow_id = flow_id
        self.batch_size = batch_size
        self.items: list[Any] = []

    def run(self, items: list[Any], workers: int = 1, end: Any = None) -> list[Any]:
        self.items.extend([*items, end or TestingSource.ABORT()])
        out: list[Any] = []
        flow = _sum_flow(self.items, out, self.flow_id, self.batch_size)
        cluster_main(
            flow, [], 0, worker_count_per_proc=workers, epoch_interval=ZERO, recovery_config=self.config
        )
        return out


FIRST = [(k, i + 1) for i, k in enumerate(KEYS)]  # k00..k39 at 1..40
HELD = dict(FIRST)


# ------------------------------------------------------------ end to end, on both stores


def test_a_restored_key_resumes_at_its_first_item_in_key_order(location: str) -> None:
    script = Script(location, batch_size=4)
    assert script.run(FIRST) == FIRST
    # One batch of three keys, out of order: outputs in key order, as Bytewax.
    assert script.run([("k07", 100), ("k02", 100), ("new", 5), ("k07", 1)]) == [
        ("k02", 103),
        ("k07", 108),
        ("k07", 109),
        ("new", 5),
    ]


def test_untouched_keys_stay_in_the_store_through_snapshots_and_compaction(location: str) -> None:
    # backup_interval 0: compaction after every commit folds each epoch into the base.
    script = Script(location, backup_interval=ZERO)
    script.run(FIRST)
    assert script.run([("k01", 10), ("k03", -4)]) == [("k01", 12), ("k03", 0)]
    # k03's state became None: a tombstone; every other key kept its state.
    expected = {k: v for k, v in HELD.items() if k != "k03"} | {"k01": 12}
    assert _stored(location) == expected
    assert script.run([(k, 1) for k in KEYS]) == [(k, expected.get(k, 0) + 1) for k in KEYS]


def test_end_of_input_emits_nothing_for_untouched_keys_and_keeps_them(location: str) -> None:
    script = Script(location)
    script.run(FIRST)
    assert script.run([("k05", 1)], end=TestingSource.EOF()) == [("k05", 7)]
    assert _stored(location) == HELD | {"k05": 7}


def test_a_rescale_moves_untouched_key_groups_with_their_state(location: str) -> None:
    script = Script(location, "rescale")
    seen: dict[str, int] = {}
    for r, workers in enumerate((1, 3, 2, 1)):
        # Each run touches every other key: the others rest through it.
        seen.update(script.run([(k, 1) for i, k in enumerate(KEYS) if (i + r) % 2 == 0], workers))
    assert seen == {k: 2 for k in KEYS}
    assert _stored(location, "rescale") == {k: 2 for k in KEYS}


def test_a_state_that_cannot_be_unpickled_stops_the_run_at_its_key(location: str) -> None:
    script = Script(location)
    script.run(FIRST)
    store = store_at(location, "lazy")
    meta = store.start_execution(1, 256)
    epoch = meta.committed_epoch + 1
    store.write_epoch(epoch, [("lazy.sum.stateful_batch", key_group("k09", 256), "k09", b"junk")])
    store.commit(epoch, 4)
    store.release()
    store.close()
    out: list[Any] = []
    flow = _sum_flow([*script.items, ("k01", 1), ("k09", 1)], out, "lazy")
    with pytest.raises(BytewaxRuntimeError) as err:
        run_main(flow, epoch_interval=ZERO, recovery_config=script.config)
    # The same error as a restore that builds every key, at the key's first item.
    assert str(err.value) == (
        "error rebuilding state of key 'k09' in step 'lazy.sum.stateful_batch' from its snapshot: "
        "UnpicklingError: pickle data was truncated"
    )
    assert out == [("k01", 3)]


def test_eof_still_sees_every_restored_key_of_a_logic_with_on_eof(location: str) -> None:
    # fold_final has an `on_eof`: its restored keys are built at restore and all emitted.
    config = RecoveryConfig(location)

    def run(items: list[Any]) -> list[Any]:
        flow = Dataflow("folds")
        s = op.input("inp", flow, TestingSource(items))
        out: list[Any] = []
        op.output("out", op.fold_final("f", s, list, lambda acc, v: [*acc, v]), TestingSink(out))
        run_main(flow, epoch_interval=ZERO, recovery_config=config)
        return out

    items: list[Any] = [("a", 1), ("b", 2), TestingSource.ABORT(), ("b", 3)]
    assert run(items) == []
    assert run(items) == [("a", [1]), ("b", [2, 3])]


# ------------------------------------------------------------ ttl


def test_restored_keys_under_a_ttl_expire_on_time_in_order_across_key_groups(
    location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    t0 = 1_800_000_000.0
    now = [t0]
    monkeypatch.setattr("headrace._engine._stateful_run._clock", lambda: now[0])
    config = RecoveryConfig(location)
    items: list[Any] = []

    def run(more: list[Any]) -> list[Any]:
        # ``(key, t)``: the clock reads t0 + t when the item reaches the step.
        items.extend(more)
        flow = Dataflow("ttl")
        s = op.input("inp", flow, TestingSource(items))
        s = op.inspect("tick", s, lambda _step, item: now.__setitem__(0, t0 + item[1]))
        s = op.map("one", s, lambda item: (item[0], 1))
        out: list[Any] = []
        op.output("out", op.stateful_map("sum", s, _sum, ttl=timedelta(seconds=100)), TestingSink(out))
        run_main(flow, epoch_interval=ZERO, recovery_config=config)
        return out

    # k00..k39 updated at t0 + 0 .. t0 + 39: the oldest are spread over the key groups.
    assert run([*((k, i) for i, k in enumerate(KEYS)), TestingSource.ABORT()]) == [(k, 1) for k in KEYS]
    now[0] = t0 + 120
    # At t0 + 120, k00..k20 (updated at t0 + 20 or before) expire before the first item;
    # k25 is touched and lives on; at 131 and 132 the next ones expire while the run goes on.
    out = run([("k25", 120), ("k05", 121), ("zz", 131), ("k25", 132)])
    assert out == [("k25", 2), ("k05", 1), ("zz", 1), ("k25", 3)]
    assert sorted(_stored(location, "ttl")) == sorted(["k05", "k25", "zz", *KEYS[33:]])


# ------------------------------------------------------------ the step itself


def _run_of(builder: Any) -> tuple[StatefulRun, list[Any]]:
    node = StatefulRun(CoreStep("f.s", "stateful_batch", {"builder": builder}, [], {}), None, track=True)
    out: list[Any] = []
    node.push = out.extend
    return node, out


def _states(keys: list[str], groups: int) -> list[dict[str, bytes]]:
    """``keys`` (each key's state: its index) as a store's `iter_load` yields them: by key group."""
    by: dict[int, dict[str, bytes]] = {}
    for i, k in enumerate(keys):
        by.setdefault(key_group(k, groups), {})[k] = pickle.dumps(i)
    return list(by.values())


def test_stateful_map_keys_rest_until_their_first_item() -> None:
    builder, _ = _map_logic(_sum, "f.s", False, "fail")
    node, out = _run_of(builder)
    for states in _states(KEYS, 16):
        node.restore(states, 16)
    assert (node.logics, sum(map(len, node.resting.values()))) == ({}, 40)
    node.deliver([("k03", 1), ("k01", 1), ("x", 1)])
    assert out == [("k01", 2), ("k03", 4), ("x", 1)]
    assert sorted(node.logics) == ["k01", "k03", "x"]
    assert (sum(map(len, node.resting.values())), node.dirty) == (38, {"k01", "k03", "x"})
    node.on_eof()
    assert out == [("k01", 2), ("k03", 4), ("x", 1)]


def test_a_users_builder_builds_every_key_at_restore() -> None:
    built: list[Any] = []

    def builder(state: Any) -> Any:
        built.append(state)
        return _map_logic(_sum, "f.s", False, "fail")[0](state)

    node, _ = _run_of(builder)
    for states in _states(KEYS[:5], 16):
        node.restore(states, 16)
    assert (sorted(built), node.resting, sorted(node.logics)) == ([0, 1, 2, 3, 4], {}, KEYS[:5])
