"""reduce_final, fold_final, count_final, max_final, min_final emit at EOF, per key."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

flow = Dataflow("finals")
items = [("b", 5), ("a", 2), ("c", 9), ("a", 7), ("b", 1), ("a", 3), ("d", 4)]
s = op.input("inp", flow, TestingSource(items))
outs = {}


def sink(name, stream):
    outs[name] = []
    op.output(f"out_{name}", stream, TestingSink(outs[name]))


sink("reduce", op.reduce_final("sum", s, lambda a, b: a + b))
sink("fold", op.fold_final("fold", s, list, lambda acc, v: [*acc, v]))
sink("count", op.count_final("count", s, lambda kv: kv[0]))
sink("max", op.max_final("max", s))
sink("min", op.min_final("min", s, by=lambda v: -v))
sink("words", op.count_final("words", op.input("w", flow, TestingSource("the cat the hat the".split())), str))
run_main(flow)
for name, got in outs.items():
    print(name, got)
