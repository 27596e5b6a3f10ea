"""collect_window with a SystemClock: all items fall in one long window that closes at EOF."""

from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import SystemClock, TumblingWindower
from bytewax.testing import TestingSink, TestingSource, run_main

flow = Dataflow("sysclock")
s = op.input("inp", flow, TestingSource([("a", 1), ("b", 2), ("a", 3)]))
windower = TumblingWindower(length=timedelta(days=365 * 100), align_to=datetime(2000, 1, 1, tzinfo=UTC))
w = win.collect_window("collect", s, SystemClock(), windower)
out = []
op.output("out", w.down, TestingSink(out))
late = []
op.output("late", w.late, TestingSink(late))
run_main(flow)
print(out)
print(late)
