"""A dataflow run while something else listens on port 3030 (Bytewax's API port) still runs."""

import socket
import subprocess
import sys

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource

flow = Dataflow("port")
op.inspect("show", op.input("inp", flow, TestingSource(["ran"])))

if __name__ == "__main__":
    holder = socket.socket()
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("0.0.0.0", 3030))
        holder.listen()
    except OSError:
        pass  # someone else holds it: in use either way
    p = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "cli_metrics_port_in_use:flow"], capture_output=True, text=True
    )
    print(p.stdout, end="")
    print("exit", p.returncode)
