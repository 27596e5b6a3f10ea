"""@operator composes operators; nested step ids show in inspect output; Stream.then chains."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.testing import TestingSource, run_main


@operator
def clean(step_id: str, up: Stream[str]) -> Stream[str]:
    stripped = op.map("strip", up, str.strip)
    nonempty = op.filter("nonempty", stripped, bool)
    return op.inspect("seen", nonempty)


flow = Dataflow("custom_op")
s = op.input("inp", flow, TestingSource([" a ", "  ", "b"]))
(
    s.then(clean, "clean")
    .then(op.map, "upper", str.upper)
    .then(op.key_on, "key", lambda x: "all")
    .then(op.inspect, "keyed")
)
print(flow.flow_id, [step.step_id for step in flow.substeps])
print([step.step_id for step in flow.substeps[1].substeps])
run_main(flow)
