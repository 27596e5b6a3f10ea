"""window (the core) with a custom WindowLogic, including on_merge under sessions."""

from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, SessionWindower, WindowLogic
from bytewax.testing import TestingSink, TestingSource, run_main

T0 = datetime(2024, 1, 1, tzinfo=UTC)


class Trace(WindowLogic):
    def __init__(self, resume_state):
        self.vals = list(resume_state or [])

    def on_value(self, value):
        self.vals.append(value[1])
        return [("value", value[1])]

    def on_merge(self, original):
        self.vals = sorted(self.vals + original.vals)
        return [("merged", list(self.vals))]

    def on_close(self):
        return [("close", list(self.vals))]

    def snapshot(self):
        return list(self.vals)


secs = [0, 20, 10, 40]
flow = Dataflow("custom")
s = op.input("inp", flow, TestingSource([("k", (T0 + timedelta(seconds=x), x)) for x in secs]))
clock = EventClock(lambda v: v[0], wait_for_system_duration=timedelta(minutes=5))
w = win.window("trace", s, clock, SessionWindower(gap=timedelta(seconds=10)), Trace)
out = []
op.output("out", w.down, TestingSink(out))
run_main(flow)
for x in out:
    print(x)
