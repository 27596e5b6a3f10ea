"""inspect_debug with its default printer and with a custom one."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main


def show(step_id, item, epoch, worker):
    print(f"{step_id} item={item!r} epoch={epoch} worker={worker}")


flow = Dataflow("dbg")
s = op.input("inp", flow, TestingSource([1, 2]))
s = op.inspect_debug("default", s)
s = op.inspect_debug("mine", s, show)
out = []
op.output("out", s, TestingSink(out))
run_main(flow)
print(out)
