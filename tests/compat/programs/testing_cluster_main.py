"""cluster_main with two worker threads: one key, so one worker does it all in order."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main

flow = Dataflow("cluster")
s = op.input("inp", flow, TestingSource(range(1, 11)))
keyed = op.key_on("all", s, lambda _: "all")
running = op.stateful_map("running", keyed, lambda st, v: ((st or 0) + v, (st or 0) + v))
total = op.reduce_final("total", keyed, lambda a, b: a + b)
out, totals = [], []
op.output("out", running, TestingSink(out))
op.output("totals", total, TestingSink(totals))
cluster_main(flow, [], 0, worker_count_per_proc=2)
print(out)
print(totals)
