"""join in every insert_mode x emit_mode, fed from one merged input so the order is fixed."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

events = [
    ("L", ("k", "l1")),
    ("R", ("k", "r1")),
    ("L", ("k", "l2")),
    ("R", ("j", "r9")),
    ("L", ("k", "l3")),
    ("R", ("k", "r2")),
    ("R", ("k", "r3")),
    ("L", ("m", "l9")),
]
flow = Dataflow("joins")
s = op.input("inp", flow, TestingSource(events))
sides = op.branch("side", s, lambda e: e[0] == "L")
left = op.map("left", sides.trues, lambda e: e[1])
right = op.map("right", sides.falses, lambda e: e[1])
results = {}
for insert in ("first", "last", "product"):
    for emit in ("complete", "final", "running"):
        name = f"{insert}_{emit}"
        results[name] = []
        j = op.join(name, left, right, insert_mode=insert, emit_mode=emit)
        op.output(f"{name}_out", j, TestingSink(results[name]))
run_main(flow)
for name, got in results.items():
    print(name, got)
