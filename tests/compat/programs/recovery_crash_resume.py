"""Crash and resume: a mapper crashes the first run; the second resumes from the last snapshot."""
# compat: run -c "import os; os.mkdir('rdir')"
# compat: run -m {pkg}.recovery rdir 1
# compat: run -m {pkg}.run {mod}:flow -r rdir -s 0 -b 0
# compat: run -m {pkg}.run {mod}:flow -r rdir -s 0 -b 0
# compat: run -m {pkg}.run {mod}:flow -r rdir -s 0 -b 0

import os

import bytewax.operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource

items = [("a", 1), ("b", 2), ("a", 3), ("b", 4), ("a", 5), ("b", 6)]


def check(kv):
    if kv[1] == 5 and not os.path.exists("crashed"):
        open("crashed", "w").close()
        raise RuntimeError("simulated crash at a=5")
    return kv


flow = Dataflow("crash")
s = op.input("inp", flow, TestingSource(items))
s = op.map("check", s, check)
sums = op.stateful_map("sum", s, lambda st, v: ((st or 0) + v, (st or 0) + v))
op.output("out", op.map("fmt", sums, lambda kv: f"{kv[0]}={kv[1]}"), StdOutSink())
