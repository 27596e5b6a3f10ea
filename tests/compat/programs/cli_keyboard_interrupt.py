"""Ctrl-C (SIGINT) during a CLI run: the exit status a shell sees, and the lines printed before."""

# Bytewax ends with a KeyboardInterrupt traceback and status 1; Headrace stops
# at the epoch boundary and exits 130, as shells and supervisors expect of an
# interrupted run (issue 18 item 9; docs/running.md).
# compat: differs exit 1 => exit 130

import signal
import subprocess
import sys
import time

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition


class Forever(StatelessSourcePartition):
    def __init__(self):
        self.n = 0

    def next_batch(self):
        self.n += 1
        if self.n == 1:
            print("started", flush=True)
        time.sleep(0.01)
        return []


class ForeverSource(DynamicSource):
    def build(self, step_id, worker_index, worker_count):
        return Forever()


flow = Dataflow("sigint")
op.inspect("show", op.input("inp", flow, ForeverSource()))

if __name__ == "__main__":
    p = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "cli_keyboard_interrupt:flow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    print(p.stdout.readline(), end="")
    p.send_signal(signal.SIGINT)
    rest = p.stdout.read()
    print("exit", p.wait(timeout=30), repr(rest))
