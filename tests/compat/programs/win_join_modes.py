"""join_window with each insert mode and emit mode over tumbling windows."""

from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, TumblingWindower
from bytewax.testing import TestingSink, TestingSource, run_main

T0 = datetime(2024, 1, 1, tzinfo=UTC)
lefts = [("k", (0, "L1")), ("k", (1, "L2")), ("j", (2, "L3")), ("k", (12, "L4"))]
rights = [("k", (3, "R1")), ("k", (4, "R2")), ("k", (13, "R3"))]
flow = Dataflow("wjoin")
left = op.input("left", flow, TestingSource(lefts))
right = op.input("right", flow, TestingSource(rights))
clock = EventClock(lambda v: T0 + timedelta(seconds=v[0]), wait_for_system_duration=timedelta(minutes=1))
windower = TumblingWindower(length=timedelta(seconds=10), align_to=T0)
results = {}
for insert in ("first", "last", "product"):
    for emit in ("complete", "final", "running"):
        name = f"{insert}_{emit}"
        j = win.join_window(name, clock, windower, left, right, insert_mode=insert, emit_mode=emit)
        strip = op.map_value(
            f"{name}_strip", j.down, lambda wv: (wv[0], tuple(None if x is None else x[1] for x in wv[1]))
        )
        results[name] = []
        op.output(f"{name}_out", strip, TestingSink(results[name]))
run_main(flow)
for name, got in results.items():
    print(name, sorted(got, key=repr))
