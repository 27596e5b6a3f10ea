"""A custom FixedPartitionedSource and FixedPartitionedSink (part_fn, snapshot, close)."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from bytewax.testing import run_main

log = []


class CountPart(StatefulSourcePartition):
    def __init__(self, name, start):
        self.name, self.i = name, start

    def next_batch(self):
        if self.i >= 3:
            raise StopIteration()
        self.i += 1
        return [(self.name, self.i)]

    def snapshot(self):
        return self.i

    def close(self):
        log.append(f"source {self.name} closed")


class Counts(FixedPartitionedSource):
    def list_parts(self):
        return ["p1"]

    def build_part(self, step_id, for_part, resume_state):
        log.append(f"build source {step_id} {for_part} {resume_state}")
        return CountPart(for_part, resume_state or 0)


class ListPart(StatefulSinkPartition):
    def __init__(self, name):
        self.name, self.n = name, 0

    def write_batch(self, values):
        self.n += len(values)
        log.append(f"sink {self.name} got {values}")

    def snapshot(self):
        return self.n

    def close(self):
        log.append(f"sink {self.name} closed after {self.n}")


class TwoFiles(FixedPartitionedSink):
    def list_parts(self):
        return ["even", "odd"]

    def part_fn(self, item_key):
        return int(item_key) % 2

    def build_part(self, step_id, for_part, resume_state):
        log.append(f"build sink {step_id} {for_part} {resume_state}")
        return ListPart(for_part)


flow = Dataflow("fixed")
s = op.input("inp", flow, Counts())
keyed = op.map("key", s, lambda kv: (str(kv[1]), kv))
op.output("out", keyed, TwoFiles())
run_main(flow)
for line in log:
    print(line)
