"""join of three sides (default modes: last, complete) and of one side."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

flow = Dataflow("join3")
src = op.input("inp", flow, TestingSource([(i % 3, ("u1" if i < 6 else "u2", i)) for i in range(9)]))
parts = []
for n in range(3):
    parts.append(op.filter_map(f"side{n}", src, lambda e, n=n: e[1] if e[0] == n else None))
j = op.join("join", *parts)
solo = op.join("solo", parts[0], emit_mode="running")
out, solo_out = [], []
op.output("out", j, TestingSink(out))
op.output("solo_out", solo, TestingSink(solo_out))
run_main(flow)
print(out)
print(solo_out)
