"""`map_async` and `map_value_async`: order, concurrency, errors, timeouts, recovery.

Completion order is forced with asyncio events (a call waits for the one
after it), never with sleeps of different lengths.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import headrace.operators as op
from headrace.dataflow import Dataflow
from headrace.recovery import RecoveryConfig
from headrace.testing import TestingSink, TestingSource, run_main
from tests.support.runs import check_output, launch, run_with_kills, write_input
from tests.support.servers import RedisServer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
ASYNC_COUNTS = "tests.support.flows.async_flows:async_counts()"
ZERO = timedelta(0)


async def _double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def _reverse_finisher(n: int) -> Any:
    """An async fn on 0..n-1 where call i finishes only after call i+1 did: completion order n-1..0."""
    done: dict[int, asyncio.Event] = {}

    async def fn(i: int) -> int:
        for j in (i, i + 1):
            done.setdefault(j, asyncio.Event())
        if i + 1 < n:
            await done[i + 1].wait()
        done[i].set()
        return i

    return fn


def test_results_come_in_input_order(run_op: Any) -> None:
    out = run_op(range(6), lambda s: op.map_async("a", s, _reverse_finisher(6)), batch_size=6)
    assert out == [0, 1, 2, 3, 4, 5]


def test_unordered_results_come_as_completed(flow: Dataflow) -> None:
    s = op.input("inp", flow, TestingSource(range(5), batch_size=5))
    out: list[Any] = []
    op.output("out", op.map_async("a", s, _reverse_finisher(5), ordered=False), TestingSink(out))
    run_main(flow)
    assert out == [4, 3, 2, 1, 0]


@pytest.mark.parametrize("batch_size", [1, 7, 50])
def test_map_async_on_every_entry_point(run_op: Any, batch_size: int) -> None:
    out = run_op(range(50), lambda s: op.map_async("a", s, _double, concurrency=4), batch_size=batch_size)
    assert out == [2 * x for x in range(50)]


def test_at_most_concurrency_calls_run_at_once(flow: Dataflow) -> None:
    running = [0, 0]  # now, most

    async def fn(x: int) -> int:
        running[0] += 1
        running[1] = max(running[1], running[0])
        await asyncio.sleep(0.001)
        running[0] -= 1
        return x

    s = op.input("inp", flow, TestingSource(range(40), batch_size=40))
    out: list[Any] = []
    op.output("out", op.map_async("a", s, fn, concurrency=3), TestingSink(out))
    run_main(flow)
    assert out == list(range(40))
    assert running == [0, 3]


def test_map_value_async_keeps_the_key(run_op: Any) -> None:
    async def upper(v: str) -> str:
        await asyncio.sleep(0)
        return v.upper()

    out = run_op([("a", "x"), ("b", "y")], lambda s: op.map_value_async("u", s, upper))
    assert out == [("a", "X"), ("b", "Y")]


def test_map_value_async_needs_keyed_items(flow: Dataflow) -> None:
    s = op.input("inp", flow, TestingSource([5]))
    op.output("out", op.map_value_async("u", s, _double), TestingSink([]))
    with pytest.raises(RuntimeError) as info:
        run_main(flow)
    assert str(info.value) == (
        'step "test.u.map_async" requires `(key, value)` 2-tuple from upstream for routing; got a `int` '
        "instead: 5; use `key_on` or `map` to make (str, value) pairs"
    )


def test_an_exception_fails_the_run_naming_step_and_item(flow: Dataflow) -> None:
    async def fn(x: int) -> int:
        await asyncio.sleep(0)
        if x == 2:
            raise ValueError("no such user")
        return x

    s = op.input("inp", flow, TestingSource([1, 2, 3]))
    op.output("out", op.map_async("lookup", s, fn), TestingSink([]))
    with pytest.raises(RuntimeError) as info:
        run_main(flow)
    assert (
        str(info.value)
        == 'error calling `mapper` in step "test.lookup.map_async" on item 2: ValueError: no such user'
    )
    assert isinstance(info.value.__cause__, ValueError)


def test_a_timeout_fails_the_run_naming_step_and_item(flow: Dataflow) -> None:
    async def fn(x: int) -> int:
        await asyncio.sleep(3600 if x == 2 else 0)
        return x

    s = op.input("inp", flow, TestingSource([1, 2, 3]))
    op.output("out", op.map_async("lookup", s, fn, timeout=timedelta(milliseconds=50)), TestingSink([]))
    with pytest.raises(RuntimeError) as info:
        run_main(flow)
    assert str(info.value) == (
        'error calling `mapper` in step "test.lookup.map_async" on item 2: TimeoutError: '
        "the call did not finish within 0.05s (the step's `timeout`)"
    )


def test_skip_drops_failed_calls_and_keeps_the_order(flow: Dataflow) -> None:
    async def fn(x: int) -> int:
        await asyncio.sleep(0)
        return 12 // x

    s = op.input("inp", flow, TestingSource([1, 0, 3, 0, 4], batch_size=5))
    out: list[Any] = []
    op.output("out", op.map_async("inv", s, fn, on_error="skip"), TestingSink(out))
    run_main(flow)
    assert out == [12, 4, 3]


def test_dead_letters_of_calls_and_timeouts(run_op: Any) -> None:
    async def fn(v: int) -> int:
        await asyncio.sleep(3600 if v == 7 else 0)
        return 12 // v

    flow = Dataflow("test")
    s = op.input("inp", flow, TestingSource([("a", 1), ("b", 0), ("c", 7), ("d", 6)]))
    out: list[Any] = []
    bad: list[Any] = []
    looked = op.map_value_async("inv", s, fn, timeout=timedelta(milliseconds=50), on_error="dead_letter")
    op.output("out", looked, TestingSink(out))
    op.output("dl", op.dead_letters("errors", flow), TestingSink(bad))
    run_main(flow)
    assert out == [("a", 12), ("d", 2)]
    assert [(d.step_id, d.key, d.item, d.exc_type, d.message) for d in bad] == [
        ("test.inv", "b", 0, "ZeroDivisionError", "integer division or modulo by zero"),
        ("test.inv", "c", 7, "TimeoutError", "the call did not finish within 0.05s (the step's `timeout`)"),
    ]


def test_a_function_that_is_not_async_fails_with_a_hint(flow: Dataflow) -> None:
    s = op.input("inp", flow, TestingSource([1]))
    op.output("out", op.map_async("a", s, lambda x: x), TestingSink([]))
    with pytest.raises(RuntimeError) as info:
        run_main(flow)
    assert str(info.value) == (
        'error calling `mapper` in step "test.a.map_async" on item 1: TypeError: `mapper` must be an '
        "`async def` function (return an awaitable); got int"
    )


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"concurrency": 0}, "`concurrency` must be an int >= 1; got 0"),
        ({"timeout": timedelta(0)}, "`timeout` must be a positive timedelta or None; got "),
    ],
)
def test_bad_arguments_fail_at_build(flow: Dataflow, kwargs: dict[str, Any], words: str) -> None:
    s = op.input("inp", flow, TestingSource([1]))
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        op.map_async("a", s, _double, **kwargs)


def test_resume_emits_every_result_once(tmp_path: Path) -> None:
    """Calls in flight when the run aborts are redone after the resume; committed ones are not."""
    from headrace.recovery import init_db_dir

    init_db_dir(tmp_path, 1)
    calls: list[int] = []

    async def fn(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.001)
        return 2 * x

    items = [1, 2, 3, TestingSource.ABORT(), 4, 5]  # one ABORT: it fires once

    def build(out: list[Any]) -> Dataflow:
        flow = Dataflow("resume_async")
        s = op.input("inp", flow, TestingSource(items))
        s = op.map_async("a", s, fn, concurrency=2)
        op.output("out", s, TestingSink(out))
        return flow

    config = RecoveryConfig(tmp_path)
    out1: list[Any] = []
    run_main(build(out1), epoch_interval=ZERO, recovery_config=config)
    out2: list[Any] = []
    run_main(build(out2), epoch_interval=ZERO, recovery_config=config)
    assert out1 + out2 == [2, 4, 6, 8, 10]
    assert calls == [1, 2, 3, 4, 5]


# ------------------------------------------------------------ kill -9 with calls in flight


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_with_calls_in_flight_is_exactly_once(
    tmp_path: Path, redis_server: RedisServer, seed: int
) -> None:
    """Each word goes through `map_async` (a 20 ms call, 50 at once) before a running count;
    a worker killed while calls are in flight loses and duplicates nothing."""
    import random

    counts = write_input(tmp_path / "in", files=4, lines=500)
    env = dict(os.environ)
    env.update(
        {
            "HR_IN": str(tmp_path / "in"),
            "HR_OUT": str(tmp_path / "out"),
            "HR_DELAY": "0.02",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime"), str(ROOT)]),
        }
    )
    rng = random.Random(seed)
    args = ["-p", "2", "-r", redis_server.url, "--epoch-interval", "0.2"]
    assert run_with_kills(lambda: launch(args, env, ASYNC_COUNTS), tmp_path / "out", rng, (50, 400)) >= 1
    check_output(tmp_path / "out", counts)
