"""Built-in connectors: sources and sinks for common systems.

- `headrace.connectors.files`: read lines or CSV rows from files and
  directories, write lines to files (exactly-once across restarts).
- `headrace.connectors.stdio`: print items to standard output.
- `headrace.connectors.demo`: a random metric source for demos.

>>> import headrace.operators as op
>>> from headrace.connectors.stdio import StdOutSink
>>> from headrace.dataflow import Dataflow
>>> from headrace.testing import TestingSource, run_main
>>> flow = Dataflow("hello")
>>> op.output("out", op.input("inp", flow, TestingSource(["hello"])), StdOutSink())
>>> run_main(flow)
hello
"""
