"""TimeTestingGetter drives an EventClock's system time; poll_next_batch and ffwd_iter."""

from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, TumblingWindower
from bytewax.testing import (
    TestingSink,
    TestingSource,
    TimeTestingGetter,
    ffwd_iter,
    poll_next_batch,
    run_main,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
clock_time = TimeTestingGetter(T0)
clock_time.advance(timedelta(seconds=5))
print(clock_time.get())

it = iter(range(10))
ffwd_iter(it, 4)
print(next(it))

part = TestingSource([1, 2, 3], batch_size=2).build_part("step", "iterable", None)
print(poll_next_batch(part), poll_next_batch(part))

flow = Dataflow("ttg")
s = op.input("inp", flow, TestingSource([("k", T0), ("k", T0 + timedelta(seconds=1))]))
clock = EventClock(
    lambda kv: kv[1], wait_for_system_duration=timedelta(seconds=30), now_getter=clock_time.get
)
w = win.count_window("count", s, clock, TumblingWindower(timedelta(seconds=10), T0), key=lambda kv: kv[0])
out = []
op.output("out", w.down, TestingSink(out))
run_main(flow)
print(out)
