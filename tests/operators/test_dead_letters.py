"""Error policies (``on_error=``) of each operator family, and the dead-letter stream.

Every test runs real dataflows and compares exact outputs: the items that
passed, the `DeadLetter` records, the error counter, the log lines.
"""

from __future__ import annotations

import logging
import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import headrace.operators as op
import headrace.operators.windowing as win
from headrace._metrics import M
from headrace.dataflow import Dataflow, Stream
from headrace.errors import BytewaxRuntimeError, DeadLetter
from headrace.operators import _dead_letters
from headrace.recovery import RecoveryConfig, init_db_dir
from headrace.testing import TestingSink, TestingSource, cluster_main, run_main

ZERO = timedelta(0)


def _errors(step_id: str, policy: str) -> float:
    for fam in M["headrace_step_errors_total"].collect():
        for s in fam.samples:
            if s.name.endswith("_total") and s.labels == {"step_id": step_id, "policy": policy}:
                return float(s.value)
    return 0.0


def _dl(d: DeadLetter) -> tuple[Any, ...]:
    return (d.step_id, d.item, d.key, d.exc_type, d.message, d.epoch)


def _run(
    build: Any, items: list[Any], policy: str, flow_id: str = "dl"
) -> tuple[list[Any], list[tuple[Any, ...]]]:
    flow = Dataflow(flow_id)
    out: list[Any] = []
    bad: list[DeadLetter] = []
    s = build(op.input("inp", flow, TestingSource(items)), policy)
    op.output("out", s, TestingSink(out))
    if policy == "dead_letter":
        op.output("dead", op.dead_letters("dead_letters", flow), TestingSink(bad))
    run_main(flow)
    return out, [_dl(d) for d in bad]


# ------------------------------------------------------------ stateless


def _inv(x: int) -> int:
    return 12 // x


STATELESS: dict[str, tuple[Any, list[Any], list[Any], list[tuple[Any, ...]]]] = {
    "map": (
        lambda up, p: op.map("m", up, _inv, on_error=p),
        [1, 0, 4],
        [12, 3],
        [("dl.m", 0, None, "ZeroDivisionError", "integer division or modulo by zero", 1)],
    ),
    "filter": (
        lambda up, p: op.filter("f", up, lambda x: _inv(x) > 3, on_error=p),
        [1, 0, 4],
        [1],
        [("dl.f", 0, None, "ZeroDivisionError", "integer division or modulo by zero", 1)],
    ),
    "filter_map": (
        lambda up, p: op.filter_map("fm", up, lambda x: _inv(x) if x != 4 else None, on_error=p),
        [1, 0, 4, 6],
        [12, 2],
        [("dl.fm", 0, None, "ZeroDivisionError", "integer division or modulo by zero", 1)],
    ),
    "flat_map": (
        lambda up, p: op.flat_map("fl", up, lambda x: (_inv(y) for y in range(x, -1, -1)), on_error=p),
        [0, 2],
        [],
        [
            ("dl.fl", 0, None, "ZeroDivisionError", "integer division or modulo by zero", 1),
            ("dl.fl", 2, None, "ZeroDivisionError", "integer division or modulo by zero", 1),
        ],
    ),
    "flat_map_not_iterable": (
        lambda up, p: op.flat_map("fl", up, lambda x: [x] if x else None, on_error=p),
        [1, 0, 2],
        [1, 2],
        [("dl.fl", 0, None, "TypeError", "'NoneType' object is not iterable", 1)],
    ),
}


@pytest.mark.parametrize("name", sorted(STATELESS))
def test_stateless_skip_drops_and_counts(name: str) -> None:
    build, items, good, dead = STATELESS[name]
    before = _errors(dead[0][0], "skip")
    out, bad = _run(build, items, "skip")
    assert out == good
    assert bad == []
    assert _errors(dead[0][0], "skip") - before == len(dead)


@pytest.mark.parametrize("name", sorted(STATELESS))
def test_stateless_dead_letter_sends_each_failed_item(name: str) -> None:
    build, items, good, dead = STATELESS[name]
    before = _errors(dead[0][0], "dead_letter")
    out, bad = _run(build, items, "dead_letter")
    assert out == good
    assert bad == dead
    assert _errors(dead[0][0], "dead_letter") - before == len(dead)


def test_fail_is_the_default_with_bytewax_words() -> None:
    flow = Dataflow("dl")
    s = op.map("m", op.input("inp", flow, TestingSource([1, 0])), _inv, on_error="fail")
    op.output("out", s, TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(flow)
    assert str(info.value) == (
        'error calling `mapper` in step "dl.m.flat_map_batch" on item 0: '
        "ZeroDivisionError: integer division or modulo by zero"
    )
    # "fail" builds exactly the steps of a call without `on_error`.
    plain = Dataflow("dl")
    op.map("m", op.input("inp", plain, TestingSource([1])), _inv)
    assert [s.step_id for s in flow.substeps[1].substeps] == [s.step_id for s in plain.substeps[1].substeps]


def test_a_fused_chain_applies_each_steps_policy() -> None:
    flow = Dataflow("dl")
    out: list[Any] = []
    bad: list[DeadLetter] = []
    s = op.input("inp", flow, TestingSource(["6", "x", "0", "3", "-1"]))
    s = op.map("parse", s, int, on_error="skip")
    s = op.map("inv", s, _inv, on_error="dead_letter")
    s = op.filter("even", s, lambda x: x % 2 == 0)
    s = op.map("neg", s, lambda x: x if x > 0 else int("neg"), on_error="dead_letter")
    op.output("out", s, TestingSink(out))
    op.output("dead", op.dead_letters("dead_letters", flow), TestingSink(bad))
    run_main(flow)
    assert out == [2, 4]
    assert [_dl(d) for d in bad] == [
        ("dl.inv", 0, None, "ZeroDivisionError", "integer division or modulo by zero", 1),
        ("dl.neg", -12, None, "ValueError", "invalid literal for int() with base 10: 'neg'", 1),
    ]
    assert bad[1].traceback.startswith("Traceback (most recent call last):\n")
    assert bad[1].traceback.endswith("ValueError: invalid literal for int() with base 10: 'neg'\n")


def test_unfused_runs_the_same() -> None:
    from headrace._engine import execute

    flow = Dataflow("dl")
    out: list[Any] = []
    bad: list[DeadLetter] = []
    s = op.map("inv", op.input("inp", flow, TestingSource([3, 0, 6])), _inv, on_error="dead_letter")
    op.output("out", s, TestingSink(out))
    op.output("dead", op.dead_letters("dead_letters", flow), TestingSink(bad))
    execute(flow, fuse=False)
    assert out == [4, 2]
    assert [(d.item, d.epoch) for d in bad] == [(0, 1)]


# ------------------------------------------------------------ stateful


def _running(state: int | None, v: int) -> tuple[int, int]:
    state = (state or 0) + 12 // v
    return state, state


STATEFUL: dict[str, tuple[Any, list[Any], list[Any], list[tuple[Any, ...]]]] = {
    "stateful_map": (
        lambda up, p: op.stateful_map("s", up, _running, on_error=p),
        [("a", 1), ("a", 0), ("b", 0), ("b", 4), ("a", 6)],
        [("a", 12), ("b", 3), ("a", 14)],
        [
            ("dl.s", 0, "a", "ZeroDivisionError", "integer division or modulo by zero", 1),
            ("dl.s", 0, "b", "ZeroDivisionError", "integer division or modulo by zero", 1),
        ],
    ),
    "stateful_map_bad_return": (
        lambda up, p: op.stateful_map("s", up, lambda st, v: (v, v) if v else v, on_error=p),
        [("a", 1), ("a", 0), ("a", 2)],
        [("a", 1), ("a", 2)],
        [("dl.s", 0, "a", "TypeError", "", 1)],  # the message: see the test
    ),
    "stateful_flat_map": (
        lambda up, p: op.stateful_flat_map("s", up, lambda st, v: (v, [12 // v, v]), on_error=p),
        [("a", 3), ("b", 0), ("a", 4)],
        [("a", 4), ("a", 3), ("a", 3), ("a", 4)],
        [("dl.s", 0, "b", "ZeroDivisionError", "integer division or modulo by zero", 1)],
    ),
}


class _Sum(op.StatefulLogic[int, int, int]):
    def __init__(self, state: int | None) -> None:
        self.total = state or 0

    def on_item(self, value: int) -> tuple[list[int], bool]:
        self.total += 12 // value
        return [self.total], False

    def snapshot(self) -> int:
        return self.total


STATEFUL["stateful"] = (
    lambda up, p: op.stateful("s", up, _Sum, on_error=p),
    [("a", 6), ("a", 0), ("a", 3)],
    [("a", 2), ("a", 6)],
    [("dl.s", 0, "a", "ZeroDivisionError", "integer division or modulo by zero", 1)],
)


def _same(bad: list[tuple[Any, ...]], dead: list[tuple[Any, ...]]) -> bool:
    # A message of "" stands for one naming the mapper and its line (checked apart).
    return len(bad) == len(dead) and all(
        b[:4] == d[:4] and b[5] == d[5] and (b[4] == d[4] or d[4] == "")
        for b, d in zip(bad, dead, strict=True)
    )


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_stateful_skip_keeps_the_state_and_counts(name: str) -> None:
    build, items, good, dead = STATEFUL[name]
    before = _errors("dl.s", "skip")
    out, bad = _run(build, items, "skip")
    assert out == good
    assert bad == []
    assert _errors("dl.s", "skip") - before == len(dead)


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_stateful_dead_letter_has_the_key(name: str) -> None:
    build, items, good, dead = STATEFUL[name]
    out, bad = _run(build, items, "dead_letter")
    assert out == good
    assert _same(bad, dead), bad
    if name == "stateful_map_bad_return":
        assert bad[0][4].endswith(
            "in step 'dl.s' must be a 2-tuple of `(updated_state, emit_value)`; got a <class 'int'> instead"
        )


def test_stateful_state_survives_in_recovery_under_skip(tmp_path: Path) -> None:
    # A failed value leaves the key's state as it was, also across a resume.
    init_db_dir(tmp_path, 1)
    config = RecoveryConfig(str(tmp_path))
    items = [("a", 1), ("a", 0), TestingSource.ABORT(), ("a", 6)]

    def build() -> tuple[Dataflow, list[Any]]:
        flow = Dataflow("dl_resume")
        out: list[Any] = []
        s = op.stateful_map("s", op.input("inp", flow, TestingSource(items)), _running, on_error="skip")
        op.output("out", s, TestingSink(out))
        return flow, out

    flow, out = build()
    run_main(flow, epoch_interval=ZERO, recovery_config=config)
    assert out == [("a", 12)]
    flow, out = build()
    run_main(flow, epoch_interval=ZERO, recovery_config=config)
    assert out == [("a", 14)]


# ------------------------------------------------------------ recovery and workers


def test_dead_letters_are_part_of_their_epoch_across_a_resume(tmp_path: Path) -> None:
    init_db_dir(tmp_path, 1)
    config = RecoveryConfig(str(tmp_path))
    items = ["1", "x", "2", TestingSource.ABORT(), "y", "3"]

    def build() -> tuple[Dataflow, list[Any], list[DeadLetter]]:
        flow = Dataflow("dl_epochs")
        out: list[Any] = []
        bad: list[DeadLetter] = []
        s = op.map("parse", op.input("inp", flow, TestingSource(items)), int, on_error="dead_letter")
        op.output("out", s, TestingSink(out))
        op.output("dead", op.dead_letters("dead_letters", flow), TestingSink(bad))
        return flow, out, bad

    flow, out, bad = build()
    run_main(flow, epoch_interval=ZERO, recovery_config=config)
    assert out == [1, 2]
    assert [(d.item, d.epoch) for d in bad] == [("x", 2)]
    flow, out, bad = build()
    run_main(flow, epoch_interval=ZERO, recovery_config=config)
    assert out == [3]
    assert [d.item for d in bad] == ["y"]
    assert bad[0].epoch > 3


def test_two_workers_each_send_their_dead_letters() -> None:
    from tests.support.servers import free_port

    flow = Dataflow("dl_two")
    out: list[Any] = []
    bad: list[DeadLetter] = []
    items = [("k" + str(i % 5), i % 4) for i in range(40)]
    s = op.input("inp", flow, TestingSource(items))
    s = op.stateful_map("s", s, _running, on_error="dead_letter")
    op.output("out", s, TestingSink(out))
    op.output("dead", op.dead_letters("dead_letters", flow), TestingSink(bad))
    cluster_main(flow, [f"127.0.0.1:{free_port()}"], 0, worker_count_per_proc=2)
    assert len(out) == 30
    assert sorted((d.key, d.item) for d in bad) == sorted((f"k{i % 5}", 0) for i in range(0, 40, 4))


def test_dead_letter_records_pickle() -> None:
    d = DeadLetter("f.m", {"x": 1}, "k", "ValueError", "bad", "tb", 3)
    assert pickle.loads(pickle.dumps(d)) == d
    f = _dead_letters._Failure("f.m", 1, ValueError("bad"))
    assert pickle.loads(pickle.dumps(f)).record() == f.record()


# ------------------------------------------------------------ building


def test_dead_letters_nobody_reads_fail_the_build() -> None:
    flow = Dataflow("dl")
    s = op.map("m", op.input("inp", flow, TestingSource([1])), _inv, on_error="dead_letter")
    op.output("out", s, TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(flow)
    assert str(info.value) == (
        "error building production dataflow: step 'dl.m' has `on_error=\"dead_letter\"` but no "
        "`dead_letters` step reads its dead letters; declare `op.dead_letters(...)` after it and "
        "send that to an output"
    )


def test_dead_letters_before_any_step_is_an_error() -> None:
    flow = Dataflow("dl")
    op.input("inp", flow, TestingSource([1]))
    with pytest.raises(ValueError, match='no step declared before it has `on_error="dead_letter"`'):
        op.dead_letters("dead_letters", flow)


def test_an_unknown_policy_is_refused() -> None:
    flow = Dataflow("dl")
    s = op.input("inp", flow, TestingSource([1]))
    with pytest.raises(ValueError) as info:
        op.map("m", s, _inv, on_error="ignore")  # type: ignore[arg-type]
    assert str(info.value) == "step 'dl.m': `on_error` must be 'fail', 'skip' or 'dead_letter'; got 'ignore'"


def test_on_error_is_keyword_only() -> None:
    s: Stream[Any] = op.input("inp", Dataflow("dl"), TestingSource([1]))
    with pytest.raises(TypeError, match="operator 'map' called incorrectly"):
        op.map("m", s, _inv, "skip")  # type: ignore[misc]


# ------------------------------------------------------------ logging


def test_skip_logs_at_most_once_per_interval_with_the_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="headrace.operators")
    monkeypatch.setattr(_dead_letters, "LOG_EVERY_SECONDS", 3600.0)
    out, _ = _run(lambda up, p: op.map("m", up, _inv, on_error=p), [0] * 25 + [3], "skip", "dl_log")
    assert out == [4]
    assert [r.getMessage() for r in caplog.records] == [
        "step 'dl_log.m' skipped an item: ZeroDivisionError: integer division or modulo by zero; item: 0"
    ]


def test_the_next_log_line_counts_those_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="headrace.operators")
    r = _dead_letters.Reporter("dl_log.n", "dead_letter")
    for i in range(5):
        r.failed(i, KeyError(i))
    r._next_log = 0.0  # the interval has passed
    r.failed("x" * 300, KeyError("last"))
    assert [rec.getMessage() for rec in caplog.records] == [
        "step 'dl_log.n' sent an item to the dead letters: KeyError: 0; item: 0",
        "step 'dl_log.n' sent an item to the dead letters (4 more since the last report): "
        f"KeyError: 'last'; item: '{'x' * 199}...",
    ]


# ------------------------------------------------------------ windows

T0 = datetime(2024, 1, 1, tzinfo=UTC)
WINDOW_ITEMS = [("k", (T0 + timedelta(seconds=s), v)) for s, v in ((1, 1), (2, 0), (3, 4), (12, 0), (13, 6))]


def _fold(wait: timedelta, policy: str, reduce: bool = False) -> tuple[list[Any], list[tuple[Any, ...]]]:
    clock = win.EventClock(lambda v: v[0], wait_for_system_duration=wait)
    windower = win.TumblingWindower(timedelta(seconds=10), T0)

    def build(up: Stream[Any], p: str) -> Stream[Any]:
        if reduce:
            r = win.reduce_window(
                "w", up, clock, windower, lambda a, b: (b[0], a[1] + 12 // b[1]), on_error=p
            )
            return op.map_value("sums", r.down, lambda iv: (iv[0], iv[1][1]))
        return win.fold_window(
            "w", up, clock, windower, lambda: 0, lambda a, v: a + 12 // v[1], lambda a, b: a + b, on_error=p
        ).down

    out, bad = _run(build, WINDOW_ITEMS, policy)
    return out, [(step, item[1], key, exc, epoch) for step, item, key, exc, _msg, epoch in bad]


# wait 0: the fused tumbling loop; wait 5 s: the general engine (values wait for the watermark).
@pytest.mark.parametrize("wait", [ZERO, timedelta(seconds=5)])
def test_fold_window_policies(wait: timedelta) -> None:
    before = _errors("dl.w", "skip")
    assert _fold(wait, "skip") == ([("k", (0, 15)), ("k", (1, 2))], [])
    assert _errors("dl.w", "skip") - before == 2
    out, bad = _fold(wait, "dead_letter")
    assert out == [("k", (0, 15)), ("k", (1, 2))]
    assert bad == [("dl.w", 0, "k", "ZeroDivisionError", 1)] * 2


def test_reduce_window_policies() -> None:
    # The first value starts the window; 12 // 0 fails for the others.
    assert _fold(ZERO, "skip", reduce=True) == ([("k", (0, 4)), ("k", (1, 2))], [])
    out, bad = _fold(ZERO, "dead_letter", reduce=True)
    assert out == [("k", (0, 4)), ("k", (1, 2))]
    assert bad == [("dl.w", 0, "k", "ZeroDivisionError", 1)]


def test_fold_window_dead_letters_on_two_workers() -> None:
    from tests.support.servers import free_port

    flow = Dataflow("dl_win2")
    out: list[Any] = []
    bad: list[DeadLetter] = []
    items = [(f"k{i % 3}", (T0 + timedelta(seconds=i), i % 4)) for i in range(30)]
    clock = win.EventClock(lambda v: v[0], wait_for_system_duration=ZERO)
    w = win.fold_window(
        "w",
        op.input("inp", flow, TestingSource(items)),
        clock,
        win.TumblingWindower(timedelta(seconds=10), T0),
        lambda: 0,
        lambda a, v: a + 12 // v[1],
        lambda a, b: a + b,
        on_error="dead_letter",
    )
    op.output("out", w.down, TestingSink(out))
    op.output("dead", op.dead_letters("dead_letters", flow), TestingSink(bad))
    cluster_main(flow, [f"127.0.0.1:{free_port()}"], 0, worker_count_per_proc=2)
    expected: dict[tuple[str, int], int] = {}
    for key, (ts, v) in items:
        wid = (ts - T0) // timedelta(seconds=10)
        expected.setdefault((key, wid), 0)
        if v:
            expected[(key, wid)] += 12 // v
    assert sorted(out) == sorted((k, (wid, n)) for (k, wid), n in expected.items())
    assert sorted((d.key, d.item[1]) for d in bad) == sorted((f"k{i % 3}", 0) for i in range(0, 30, 4))


# ------------------------------------------------------------ Kafka deserializers


def _kafka(policy: str | None, which: str) -> tuple[list[Any], list[Any], list[tuple[Any, ...]]]:
    from confluent_kafka.serialization import StringDeserializer

    from headrace.connectors.kafka import KafkaSourceMessage
    from headrace.connectors.kafka import operators as kop

    msgs = [
        KafkaSourceMessage(b"a", b"1", topic="t", partition=0, offset=7),
        KafkaSourceMessage(b"\xff", b"\xff", topic="t", partition=1, offset=8),
        KafkaSourceMessage(b"c", b"3", topic="t", partition=0, offset=9),
    ]
    flow = Dataflow("dl_kafka")
    oks: list[Any] = []
    errs: list[Any] = []
    bad: list[DeadLetter] = []
    up = op.input("inp", flow, TestingSource(msgs))
    kw: dict[str, Any] = {} if policy is None else {"on_error": policy}
    if which == "deserialize":
        out = kop.deserialize(
            "de", up, key_deserializer=StringDeserializer(), val_deserializer=StringDeserializer(), **kw
        )
    else:
        out = getattr(kop, which)("de", up, StringDeserializer(), **kw)
    op.output("oks", op.map("kv", out.oks, lambda m: (m.key, m.value)), TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    if policy == "dead_letter":
        op.output("dead", op.dead_letters("dead_letters", flow), TestingSink(bad))
    run_main(flow)
    return oks, errs, [(d.step_id, d.item.offset, d.exc_type, d.message, d.epoch) for d in bad]


@pytest.mark.parametrize("which", ["deserialize", "deserialize_key", "deserialize_value"])
def test_kafka_deserializers_policies(which: str) -> None:
    field = "value" if which == "deserialize_value" else "key"
    ok = {
        "deserialize": [("a", "1"), ("c", "3")],
        "deserialize_key": [("a", b"1"), ("c", b"3")],
        "deserialize_value": [(b"a", "1"), (b"c", "3")],
    }[which]
    oks, errs, bad = _kafka(None, which)
    assert (oks, [e.msg.offset for e in errs], bad) == (ok, [8], [])
    assert _kafka("skip", which) == (ok, [], [])
    oks, errs, bad = _kafka("dead_letter", which)
    assert (oks, errs) == (ok, [])
    assert bad == [
        (
            "dl_kafka.de",
            8,
            "ValueError",
            f"step 'de': can't deserialize the {field} of the message at topic 't' partition 1 "
            "offset 8: SerializationError: 'utf-8' codec can't decode byte 0xff in position 0: "
            "invalid start byte",
            1,
        )
    ]
    with pytest.raises(BytewaxRuntimeError, match=f"can't deserialize the {field} of the message"):
        _kafka("fail", which)


def test_kafka_on_error_and_raise_on_errors_exclude_each_other() -> None:
    from confluent_kafka.serialization import StringDeserializer

    from headrace.connectors.kafka import operators as kop

    up = op.input("inp", Dataflow("dl_kafka"), TestingSource([]))
    with pytest.raises(ValueError) as info:
        kop.deserialize_value("de", up, StringDeserializer(), raise_on_errors=True, on_error="skip")
    assert str(info.value) == "step 'dl_kafka.de': give `raise_on_errors` or `on_error`, not both"


VALUE_KINDS: dict[str, tuple[Any, list[Any]]] = {
    "map_value": (lambda up, p: op.map_value("v", up, _inv, on_error=p), [("a", 12), ("b", 6)]),
    "filter_value": (
        lambda up, p: op.filter_value("v", up, lambda v: _inv(v) > 1, on_error=p),
        [("a", 1), ("b", 2)],
    ),
    "filter_map_value": (
        lambda up, p: op.filter_map_value("v", up, lambda v: _inv(v) if v != 1 else None, on_error=p),
        [("b", 6)],
    ),
    "flat_map_value": (
        lambda up, p: op.flat_map_value("v", up, lambda v: [v, _inv(v)], on_error=p),
        [("a", 1), ("a", 12), ("b", 2), ("b", 6)],
    ),
}


@pytest.mark.parametrize("name", sorted(VALUE_KINDS))
def test_value_operators_policies_keep_the_key(name: str) -> None:
    build, good = VALUE_KINDS[name]
    items = [("a", 1), ("z", 0), ("b", 2), 5]
    assert _run(build, items, "skip") == (good, [])
    out, bad = _run(build, items, "dead_letter")
    assert out == good
    assert bad == [
        ("dl.v", 0, "z", "ZeroDivisionError", "integer division or modulo by zero", 1),
        ("dl.v", 5, None, "TypeError", "cannot unpack non-iterable int object", 1),
    ]
