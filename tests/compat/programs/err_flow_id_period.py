"""A Dataflow id with a period, and a bad import string, as a user's tests would see them."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource

for flow_id in ("ok_id", "bad.id"):
    try:
        flow = Dataflow(flow_id)
        op.input("inp", flow, TestingSource([1]))
        print(flow_id, "accepted")
    except Exception as e:
        print(flow_id, "refused with", type(e).__name__)
