"""count_window, max_window and min_window over tumbling windows of event time."""

from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, TumblingWindower
from bytewax.testing import TestingSink, TestingSource, run_main

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
readings = [
    ("temp", 0, 21.5),
    ("hum", 1, 40.0),
    ("temp", 2, 23.0),
    ("temp", 6, 19.5),
    ("hum", 7, 45.0),
    ("temp", 7, 20.0),
]
flow = Dataflow("cmm")
s = op.input("inp", flow, TestingSource([(n, T0 + timedelta(minutes=m), v) for n, m, v in readings]))
clock = EventClock(lambda r: r[1], wait_for_system_duration=timedelta(0))
windower = TumblingWindower(length=timedelta(minutes=5), align_to=T0)
counts = win.count_window("count", s, clock, windower, key=lambda r: r[0])
keyed = op.key_on("key", s, lambda r: r[0])
hi = win.max_window("max", keyed, clock, windower, by=lambda r: r[2])
lo = win.min_window("min", keyed, clock, windower, by=lambda r: r[2])
res = {"count": [], "max": [], "min": []}
op.output("c", counts.down, TestingSink(res["count"]))
op.output("hi", op.map_value("hv", hi.down, lambda wv: (wv[0], wv[1][2])), TestingSink(res["max"]))
op.output("lo", op.map_value("lv", lo.down, lambda wv: (wv[0], wv[1][2])), TestingSink(res["min"]))
run_main(flow)
for k, v in res.items():
    print(k, v)
