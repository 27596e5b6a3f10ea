"""collect_window into set and dict, and ordered=False."""

from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, TumblingWindower
from bytewax.testing import TestingSink, TestingSource, run_main

T0 = datetime(2024, 1, 1, tzinfo=UTC)
items = [("k", (3, ("x", 1))), ("k", (1, ("y", 2))), ("k", (2, ("x", 3))), ("k", (15, ("z", 4)))]
flow = Dataflow("into")
s = op.input("inp", flow, TestingSource(items))
clock = EventClock(lambda v: T0 + timedelta(seconds=v[0]), wait_for_system_duration=timedelta(minutes=1))
windower = TumblingWindower(length=timedelta(seconds=10), align_to=T0)
pairs = op.map_value("pair", s, lambda v: v)
as_list = win.collect_window("list", pairs, clock, windower)
unordered = win.collect_window("unordered", pairs, clock, windower, ordered=False)
kv = op.map_value("kv", s, lambda v: v[1])
clock2 = EventClock(lambda v: T0, wait_for_system_duration=timedelta(minutes=1))
as_dict = win.collect_window("dict", kv, clock2, windower, into=dict)
as_set = win.collect_window("set", op.map_value("first", kv, lambda v: v[0]), clock2, windower, into=set)
res = {n: [] for n in ("list", "unordered", "dict", "set")}
op.output("o1", as_list.down, TestingSink(res["list"]))
op.output("o2", unordered.down, TestingSink(res["unordered"]))
op.output("o3", as_dict.down, TestingSink(res["dict"]))
op.output(
    "o4", op.map_value("sorted", as_set.down, lambda wv: (wv[0], sorted(wv[1]))), TestingSink(res["set"])
)
run_main(flow)
for n, v in res.items():
    print(n, v)
