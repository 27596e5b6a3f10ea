"""fold_window with a SlidingWindower: an item lands in every window covering it."""

from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, SlidingWindower
from bytewax.testing import TestingSink, TestingSource, run_main

ALIGN = datetime(2024, 1, 1, tzinfo=UTC)
events = [("s", ALIGN + timedelta(seconds=sec), sec) for sec in (0, 4, 5, 9, 13, 21)]
flow = Dataflow("slide")
s = op.input("inp", flow, TestingSource(events))
keyed = op.map("key", s, lambda e: (e[0], e))
clock = EventClock(lambda e: e[1], wait_for_system_duration=timedelta(seconds=0))
windower = SlidingWindower(length=timedelta(seconds=10), offset=timedelta(seconds=5), align_to=ALIGN)
w = win.fold_window("fold", keyed, clock, windower, list, lambda acc, e: [*acc, e[2]], lambda a, b: a + b)
out = []
op.output("out", w.down, TestingSink(out))
meta = []
op.output(
    "meta",
    op.map_value("m", w.meta, lambda m: (m[0], m[1].open_time.second, m[1].close_time.second)),
    TestingSink(meta),
)
run_main(flow)
for x in out:
    print(x)
for x in meta:
    print(x)
