"""A custom DynamicSource and DynamicSink, with next_awake and close."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main


class Part(StatelessSourcePartition):
    def __init__(self, worker_index, worker_count):
        print(f"source built on worker {worker_index} of {worker_count}")
        self.batches = [[1, 2], [], [3]]

    def next_batch(self):
        if not self.batches:
            raise StopIteration()
        return self.batches.pop(0)

    def next_awake(self):
        return None

    def close(self):
        print("source closed")


class Numbers(DynamicSource):
    def build(self, step_id, worker_index, worker_count):
        print("building", step_id)
        return Part(worker_index, worker_count)


class Printer(StatelessSinkPartition):
    def write_batch(self, items):
        print("write", items)

    def close(self):
        print("sink closed")


class PrintSink(DynamicSink):
    def build(self, step_id, worker_index, worker_count):
        print("building", step_id, worker_index, worker_count)
        return Printer()


flow = Dataflow("dyn")
s = op.input("inp", flow, Numbers())
op.output("out", op.map("double", s, lambda x: x * 2), PrintSink())
run_main(flow)
