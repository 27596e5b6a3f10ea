"""reduce_window with a SessionWindower: sessions merge when an item bridges them."""

from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, SessionWindower
from bytewax.testing import TestingSink, TestingSource, run_main

T0 = datetime(2024, 1, 1, tzinfo=UTC)
# Seconds: 0 1 | 10 | 5 bridges 1 and 10 (gap 5) | 30 31
secs = [("u", 0), ("u", 1), ("u", 10), ("v", 2), ("u", 5), ("u", 30), ("u", 31), ("v", 20)]
flow = Dataflow("session")
s = op.input("inp", flow, TestingSource([(k, (T0 + timedelta(seconds=x), x)) for k, x in secs]))
clock = EventClock(lambda v: v[0], wait_for_system_duration=timedelta(seconds=60))
w = win.reduce_window(
    "sum", s, clock, SessionWindower(gap=timedelta(seconds=5)), lambda a, b: (a[0], a[1] + b[1])
)
down = op.map_value("strip", w.down, lambda wv: (wv[0], wv[1][1]))
meta = op.map_value(
    "fmt",
    w.meta,
    lambda wm: (wm[0], wm[1].open_time.second, wm[1].close_time.second, sorted(wm[1].merged_ids)),
)
out, metas = [], []
op.output("out", down, TestingSink(out))
op.output("meta", meta, TestingSink(metas))
run_main(flow)
print(out)
print(metas)
