"""collect's timeout: a key's list is emitted once its timeout has passed, before EOF."""

from datetime import timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

items = [("a", 1), ("a", 2), TestingSource.PAUSE(timedelta(milliseconds=400)), ("a", 3), ("b", 4)]
flow = Dataflow("ctimeout")
s = op.input("inp", flow, TestingSource(items))
c = op.collect("collect", s, timeout=timedelta(milliseconds=1), max_size=100)
op.inspect("out", c)
run_main(flow)
