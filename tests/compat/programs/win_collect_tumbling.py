"""collect_window with a TumblingWindower and an EventClock: down, late and meta streams."""

from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, TumblingWindower
from bytewax.testing import TestingSink, TestingSource, run_main

ALIGN = datetime(2024, 1, 1, tzinfo=UTC)


def at(minute, key, value):
    return {"t": ALIGN + timedelta(minutes=minute), "k": key, "v": value}


events = [
    at(0, "a", 1),
    at(3, "b", 2),
    at(7, "a", 3),
    at(12, "a", 4),
    at(11, "b", 5),
    at(25, "a", 6),
    at(2, "a", 7),
]
flow = Dataflow("tumble")
s = op.input("inp", flow, TestingSource(events))
keyed = op.key_on("key", s, lambda e: e["k"])
clock = EventClock(lambda e: e["t"], wait_for_system_duration=timedelta(minutes=0))
windower = TumblingWindower(length=timedelta(minutes=10), align_to=ALIGN)
w = win.collect_window("collect", keyed, clock, windower)
down = op.map_value("vals", w.down, lambda wv: (wv[0], [e["v"] for e in wv[1]]))
late = op.map_value("late_vals", w.late, lambda wv: (wv[0], wv[1]["v"]))
meta = op.map_value(
    "meta_fmt", w.meta, lambda wm: (wm[0], wm[1].open_time.isoformat(), wm[1].close_time.isoformat())
)
outs = {"down": [], "late": [], "meta": []}
op.output("down", down, TestingSink(outs["down"]))
op.output("late", late, TestingSink(outs["late"]))
op.output("meta", meta, TestingSink(outs["meta"]))
run_main(flow)
for name, got in outs.items():
    print(name)
    for x in got:
        print("  ", x)
