"""State with a time to live (``ttl=``): expiry per operator, tombstones, resume.

Time is a fake clock (`headrace._engine._stateful_run._clock`, seconds),
which an `inspect` step sets from each item's third field just before the
stateful step handles it (one item per batch), so expiry is exact.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import headrace.operators as op
from headrace._engine._store import open_store
from headrace._metrics import M
from headrace.dataflow import Dataflow, Stream
from headrace.recovery import RecoveryConfig, init_db_dir
from headrace.testing import TestingSink, TestingSource, run_main

pytestmark = pytest.mark.timeout(60)

T0 = 1_800_000_000.0
TTL = timedelta(seconds=10)
ZERO = timedelta(0)


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = T0
        monkeypatch.setattr("headrace._engine._stateful_run._clock", lambda: self.now)

    def timed(self, up: Stream[Any]) -> Stream[Any]:
        """``(key, value, t)`` items: the clock reads T0 + t when the item arrives; ``(key, value)`` go on."""

        def tick(_step: str, item: Any) -> None:
            self.now = T0 + item[2]

        seen = op.inspect("tick", up, tick)
        return op.map("untime", seen, lambda item: (item[0], item[1]))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def _count(state: int | None, _v: Any) -> tuple[int, int]:
    n = (state or 0) + 1
    return n, n


def _run(items: list[Any], clock: Clock, build: Any, **kwargs: Any) -> list[Any]:
    flow = Dataflow("test")
    s = clock.timed(op.input("inp", flow, TestingSource(items)))
    out: list[Any] = []
    op.output("out", build(s), TestingSink(out))
    run_main(flow, **kwargs)
    return out


def test_stateful_map_forgets_a_key_not_updated_for_the_ttl(clock: Clock) -> None:
    items = [("a", 0, 0), ("a", 0, 5), ("b", 0, 6), ("a", 0, 15.5), ("b", 0, 16), ("a", 0, 25)]
    out = _run(items, clock, lambda s: op.stateful_map("c", s, _count, ttl=TTL))
    # a: updated at 5, seen again at 15.5 (10.5 s later): starts over; b: 16 - 6 = 10: expired.
    assert out == [("a", 1), ("a", 2), ("b", 1), ("a", 1), ("b", 1), ("a", 2)]


def test_without_ttl_nothing_expires(clock: Clock) -> None:
    items = [("a", 0, 0), ("a", 0, 1000)]
    assert _run(items, clock, lambda s: op.stateful_map("c", s, _count)) == [("a", 1), ("a", 2)]


def test_stateful_flat_map_and_stateful(clock: Clock) -> None:
    class Count(op.StatefulLogic):
        def __init__(self, resume: int | None) -> None:
            self.n = resume or 0

        def on_item(self, value: Any) -> tuple[list[int], bool]:
            self.n += 1
            return [self.n], False

        def snapshot(self) -> int:
            return self.n

    items = [("a", 0, 0), ("a", 0, 9), ("a", 0, 20)]
    assert _run(items, clock, lambda s: op.stateful("c", s, Count, ttl=TTL)) == [("a", 1), ("a", 2), ("a", 1)]

    def twice(state: int | None, _v: Any) -> tuple[int, list[int]]:
        n = (state or 0) + 1
        return n, [n, n]

    out = _run(items, clock, lambda s: op.stateful_flat_map("c", s, twice, ttl=TTL))
    assert out == [("a", 1), ("a", 1), ("a", 2), ("a", 2), ("a", 1), ("a", 1)]


def test_final_aggregations_drop_expired_keys_unemitted(clock: Clock) -> None:
    items = [("a", 1, 0), ("b", 2, 0), ("a", 3, 5), ("b", 4, 20), ("c", 5, 21)]
    # At 20, a (updated at 5) and b (at 0) expire; b starts over with 4.
    fold = _run(items, clock, lambda s: op.fold_final("f", s, list, lambda acc, v: [*acc, v], ttl=TTL))
    assert sorted(fold) == [("b", [4]), ("c", [5])]
    red = _run(items, clock, lambda s: op.reduce_final("r", s, lambda x, y: x + y, ttl=TTL))
    assert sorted(red) == [("b", 4), ("c", 5)]
    cnt = _run(items, clock, lambda s: op.count_final("n", s, lambda kv: kv[0], ttl=TTL))
    assert sorted(cnt) == [("b", 1), ("c", 1)]
    mx = _run(items, clock, lambda s: op.max_final("m", s, ttl=TTL))
    mn = _run(items, clock, lambda s: op.min_final("m", s, ttl=TTL))
    assert sorted(mx) == sorted(mn) == [("b", 4), ("c", 5)]


def test_expiry_at_end_of_input_emits_nothing_for_expired_keys(clock: Clock) -> None:
    items = [("a", 1, 0), ("b", 2, 30)]
    out = _run(items, clock, lambda s: op.fold_final("f", s, list, lambda acc, v: [*acc, v], ttl=TTL))
    assert out == [("b", [2])]


def test_join_drops_a_half_joined_key(clock: Clock) -> None:
    flow = Dataflow("test")
    items = [("L", "u1", "ann", 0), ("L", "u2", "bo", 0), ("R", "u2", 40, 5), ("R", "u1", 30, 20)]
    s = op.input("inp", flow, TestingSource(items))

    def tick(_step: str, item: Any) -> None:
        clock.now = T0 + item[3]

    s = op.inspect("tick", s, tick)
    left = op.map("left", op.filter("is_l", s, lambda i: i[0] == "L"), lambda i: (i[1], i[2]))
    right = op.map("right", op.filter("is_r", s, lambda i: i[0] == "R"), lambda i: (i[1], i[2]))
    out: list[Any] = []
    op.output("o", op.join("j", left, right, ttl=TTL), TestingSink(out))
    run_main(flow)
    # u2's right value comes at 5 (joins); u1's at 20, after its left value expired.
    assert out == [("u2", ("bo", 40))]


def test_expirations_are_counted_per_step(clock: Clock) -> None:
    seen: list[float] = []

    def peek(_step: str, _item: Any) -> None:
        seen.append(M["headrace_state_expired_keys_total"].labels("test.c.stateful_batch", "0").value)

    items = [("a", 0, 0), ("b", 0, 0), ("c", 0, 3), ("d", 0, 12), ("e", 0, 30)]
    _run(items, clock, lambda s: op.inspect("peek", op.stateful_map("c", s, _count, ttl=TTL), peek))
    # At 12, a and b (0) expire; at 30, c (3) and d (12).
    assert seen == [0, 0, 0, 2, 4]


def test_ttl_must_be_positive(flow: Dataflow) -> None:
    s = op.input("inp", flow, TestingSource([("a", 1)]))
    with pytest.raises(ValueError, match=r"`ttl` must be a positive timedelta or None; got"):
        op.stateful_map("c", s, _count, ttl=ZERO)


def test_no_ttl_leaves_the_step_as_it_was(flow: Dataflow) -> None:
    from headrace._engine._plan import build_plan

    s = op.input("inp", flow, TestingSource([("a", 1)]))
    op.output("o", op.stateful_map("c", s, _count), TestingSink([]))
    [step] = [st for st in build_plan(flow).steps if st.kind == "stateful_batch"]
    assert set(step.conf) == {"builder"}


# ------------------------------------------------------------ recovery


@pytest.fixture(params=["sqlite", "redis"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        init_db_dir(tmp_path / "state", 2)
        return str(tmp_path / "state")
    return str(request.getfixturevalue("redis_server").url)


def _stored(location: str, flow_id: str, step_id: str) -> set[str]:
    store = open_store(location, flow_id)
    meta = store.load_meta()
    assert meta is not None
    keys = {k for states in store.load(step_id, list(range(meta.key_groups))).values() for k in states}
    store.close()
    return keys


def _counts_flow(items: list[Any], clock: Clock, out: list[Any]) -> Dataflow:
    flow = Dataflow("ttl_resume")
    s = clock.timed(op.input("inp", flow, TestingSource(items)))
    op.output("out", op.stateful_map("c", s, _count, ttl=TTL), TestingSink(out))
    return flow


def test_expired_keys_leave_the_store_and_stay_expired_after_a_resume(location: str, clock: Clock) -> None:
    config = RecoveryConfig(location)
    step = "ttl_resume.c.stateful_batch"
    items = [
        ("a", 0, 0),
        ("b", 0, 0),
        ("b", 0, 8),
        ("c", 0, 12),
        TestingSource.ABORT(),
        ("a", 0, 13),
        ("b", 0, 14),
    ]
    out1: list[Any] = []
    run_main(_counts_flow(items, clock, out1), epoch_interval=ZERO, recovery_config=config)
    assert out1 == [("a", 1), ("b", 1), ("b", 2), ("c", 1)]
    # At 12, a (0) expired: its tombstone is in the committed snapshot.
    assert _stored(location, "ttl_resume", step) == {"b", "c"}
    out2: list[Any] = []
    clock.now = T0 + 12
    run_main(_counts_flow(items, clock, out2), epoch_interval=ZERO, recovery_config=config)
    # a stays expired (starts over); b kept its count and its update time (8).
    assert out2 == [("a", 1), ("b", 3)]
    assert _stored(location, "ttl_resume", step) == {"a", "b", "c"}


def test_keys_expire_while_the_dataflow_is_down(location: str, clock: Clock) -> None:
    config = RecoveryConfig(location)
    step = "ttl_resume.c.stateful_batch"
    items = [("a", 0, 0), ("b", 0, 5), TestingSource.ABORT(), ("b", 0, 100)]
    out1: list[Any] = []
    run_main(_counts_flow(items, clock, out1), epoch_interval=ZERO, recovery_config=config)
    assert out1 == [("a", 1), ("b", 1)]
    assert _stored(location, "ttl_resume", step) == {"a", "b"}
    # Resumed 100 s later: both keys expire at the resume, before any item.
    clock.now = T0 + 100
    out2: list[Any] = []
    run_main(_counts_flow(items, clock, out2), epoch_interval=ZERO, recovery_config=config)
    assert out2 == [("b", 1)]
    assert _stored(location, "ttl_resume", step) == {"b"}


def test_a_ttl_added_to_stored_state_starts_the_keys_clocks_at_the_resume(
    tmp_path: Path, clock: Clock
) -> None:
    init_db_dir(tmp_path, 1)
    config = RecoveryConfig(tmp_path)
    items = [("a", 0, 0), TestingSource.ABORT(), ("a", 0, 1005), ("a", 0, 1012)]

    def build(out: list[Any], ttl: timedelta | None) -> Dataflow:
        flow = Dataflow("ttl_added")
        s = clock.timed(op.input("inp", flow, TestingSource(items)))
        op.output("out", op.stateful_map("c", s, _count, ttl=ttl), TestingSink(out))
        return flow

    out1: list[Any] = []
    run_main(build(out1, None), epoch_interval=ZERO, recovery_config=config)
    clock.now = T0 + 1000
    out2: list[Any] = []
    run_main(build(out2, TTL), epoch_interval=ZERO, recovery_config=config)
    # The key's time starts at the resume (1000), not at its last update (0): it lives on.
    assert out1 == [("a", 1)]
    assert out2 == [("a", 2), ("a", 3)]


def test_a_ttl_removed_keeps_the_stored_keys(tmp_path: Path, clock: Clock) -> None:
    init_db_dir(tmp_path, 1)
    config = RecoveryConfig(tmp_path)
    items = [("a", 0, 0), TestingSource.ABORT(), ("a", 0, 1000)]

    def build(out: list[Any], ttl: timedelta | None) -> Dataflow:
        flow = Dataflow("ttl_removed")
        s = clock.timed(op.input("inp", flow, TestingSource(items)))
        op.output("out", op.stateful_map("c", s, _count, ttl=ttl), TestingSink(out))
        return flow

    out1: list[Any] = []
    run_main(build(out1, TTL), epoch_interval=ZERO, recovery_config=config)
    out2: list[Any] = []
    run_main(build(out2, None), epoch_interval=ZERO, recovery_config=config)
    assert (out1, out2) == ([("a", 1)], [("a", 2)])
