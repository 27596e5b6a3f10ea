"""collect emits a key's list at max_size, and the rest at EOF (timeout never reached)."""

from datetime import timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

flow = Dataflow("collect")
items = [("a", i) for i in range(5)] + [("b", i) for i in range(4)] + [("a", 99)]
s = op.input("inp", flow, TestingSource(items))
c = op.collect("collect", s, timeout=timedelta(hours=1), max_size=3)
out = []
op.output("out", c, TestingSink(out))
run_main(flow)
for x in out:
    print(x)
