"""A StatefulLogic timer: notify_at in the past fires on_notify before the next items arrive."""

from datetime import UTC, datetime, timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic
from bytewax.testing import TestingSource, run_main

PAST = datetime(2000, 1, 1, tzinfo=UTC)


class Reminder(StatefulLogic):
    def __init__(self, resume_state):
        self.pending = resume_state or []

    def on_item(self, value):
        self.pending.append(value)
        return [f"got {value}"], False

    def on_notify(self):
        fired, self.pending = self.pending, []
        return [f"notified {fired}"], False

    def on_eof(self):
        return [f"eof pending {self.pending}"], True

    def notify_at(self):
        return PAST if self.pending else None

    def snapshot(self):
        return list(self.pending)


items = [("k", 1), ("k", 2), TestingSource.PAUSE(timedelta(milliseconds=300)), ("k", 3)]
flow = Dataflow("timers")
s = op.input("inp", flow, TestingSource(items, batch_size=2))
op.inspect("out", op.stateful("remind", s, Reminder))
run_main(flow)
