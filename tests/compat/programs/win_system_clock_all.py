"""All three windowers with a SystemClock: values per window, ids made relative (they follow now)."""

from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import SessionWindower, SlidingWindower, SystemClock, TumblingWindower
from bytewax.testing import TestingSink, TestingSource, run_main

align = datetime(2000, 1, 1, tzinfo=UTC)
windowers = {
    "tumbling": TumblingWindower(length=timedelta(days=3650), align_to=align),
    "sliding": SlidingWindower(length=timedelta(days=7300), offset=timedelta(days=3650), align_to=align),
    "session": SessionWindower(gap=timedelta(hours=1)),
}
items = [("a", 1), ("b", 2), ("a", 3), ("b", 4), ("a", 5)]
for name, windower in windowers.items():
    flow = Dataflow(f"sys_{name}")
    s = op.input("inp", flow, TestingSource(items, batch_size=2))
    w = win.fold_window(
        "sum", s, SystemClock(), windower, lambda: 0, lambda acc, v: acc + v, lambda a, b: a + b
    )
    out, meta, late = [], [], []
    op.output("out", w.down, TestingSink(out))
    op.output("meta", w.meta, TestingSink(meta))
    op.output("late", w.late, TestingSink(late))
    run_main(flow)
    first = min(wid for _k, (wid, _v) in out)
    print(name, [(k, wid - first, v) for k, (wid, v) in out])
    print(name, "windows", sorted((k, wid - first) for k, (wid, _m) in meta), "late", late)
