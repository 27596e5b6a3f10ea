"""redistribute on one worker keeps every item; raises with no items lets the run finish."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

flow = Dataflow("redist")
nums = op.input("inp", flow, TestingSource(range(5)))
spread = op.redistribute("spread", nums)
out = []
op.output("out", spread, TestingSink(out))
never = op.filter("none", nums, lambda x: x > 100)
op.raises("never", never)
run_main(flow)
print(out)
