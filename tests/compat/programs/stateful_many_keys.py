"""stateful_map over many keys: the order of output lines across keys, and at EOF."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

flow = Dataflow("many")
items = [(f"key{(i * 7) % 23}", i) for i in range(60)]
s = op.input("inp", flow, TestingSource(items, batch_size=10))
counts = op.stateful_map("count", s, lambda st, v: ((st or 0) + 1, (st or 0) + 1))
op.inspect("seen", counts)
finals = op.count_final("final", s, lambda kv: kv[0])
op.inspect("final_counts", finals)
run_main(flow)
