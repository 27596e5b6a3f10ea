"""fold_window with a SessionWindower: an item bridges sessions formed in earlier batches.

Unordered, so values fold as they arrive. Key "s" gets its values in three
batches (batch size 3, key "f" fills): 0 | 1500 650 1077 | 500, with a gap
of 0.5 s and a wait of 2 s. 650 opens a session between 0 and 1500; 1077
merges 650's and 1500's; 500, in the next batch, merges 0's into that one.
"""

from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, SessionWindower
from bytewax.testing import TestingSink, TestingSource, run_main

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2024, 6, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)
items = [
    ("s", 0), ("f", 0), ("f", 1),
    ("s", 1500), ("s", 650), ("s", 1077),
    ("s", 500), ("f", 2), ("f", 9000),
]  # fmt: skip
flow = Dataflow("session_batches")
s = op.input("inp", flow, TestingSource([(k, (T0 + MS * x, x)) for k, x in items], batch_size=3))
clock = EventClock(lambda v: v[0], wait_for_system_duration=timedelta(seconds=2), now_getter=lambda: NOW)
w = win.fold_window(
    "fold",
    s,
    clock,
    SessionWindower(gap=MS * 500),
    list,
    lambda acc, v: [*acc, v[1]],
    lambda a, b: a + b,
    ordered=False,
)
meta = op.map_value(
    "fmt",
    w.meta,
    lambda wm: (wm[0], (wm[1].open_time - T0) // MS, (wm[1].close_time - T0) // MS, sorted(wm[1].merged_ids)),
)
out, metas, late = [], [], []
op.output("out", w.down, TestingSink(out))
op.output("meta", meta, TestingSink(metas))
op.output("late", w.late, TestingSink(late))
run_main(flow)
print(out)
print(metas)
print(late)
