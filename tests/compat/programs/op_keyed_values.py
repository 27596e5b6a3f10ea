"""key_on, map_value, filter_value, filter_map_value, flat_map_value, key_rm."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

flow = Dataflow("keyed")
words = op.input("inp", flow, TestingSource(["apple", "bob", "cherry", "dave", "eve", "fig"]))
keyed = op.key_on("first", words, lambda w: w[0])
lens = op.map_value("len", keyed, len)
long = op.filter_value("long", lens, lambda n: n > 2)
halves = op.filter_map_value("half", long, lambda n: n // 2 if n % 2 == 0 else None)
spread = op.flat_map_value("spread", halves, range)
out_keyed = []
op.output("out_keyed", spread, TestingSink(out_keyed))
plain = op.key_rm("unkey", spread)
out_plain = []
op.output("out_plain", plain, TestingSink(out_plain))
run_main(flow)
print(out_keyed)
print(out_plain)
