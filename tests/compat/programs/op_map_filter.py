"""map and filter into StdOutSink, run as a script with run_main."""

import bytewax.operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

flow = Dataflow("map_filter")
nums = op.input("inp", flow, TestingSource(range(10)))
squares = op.map("square", nums, lambda x: x * x)
evens = op.filter("even", squares, lambda x: x % 2 == 0)
labelled = op.map("label", evens, lambda x: f"sq={x}")
op.output("out", labelled, StdOutSink())

if __name__ == "__main__":
    run_main(flow)
    print("done")
