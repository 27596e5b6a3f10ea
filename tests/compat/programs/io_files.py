"""FileSource, DirSource, CSVSource and FileSink: what a file pipeline reads and writes."""

import os
from pathlib import Path

import bytewax.operators as op
from bytewax.connectors.files import CSVSource, DirSource, FileSink, FileSource
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

os.makedirs("in_dir", exist_ok=True)
with open("in_dir/a.txt", "w") as f:
    f.write("one\ntwo\n\nthree\n")
with open("in_dir/b.txt", "w") as f:
    f.write("four\nfive")
with open("data.csv", "w") as f:
    f.write("name,qty\napple,3\npear,5\n")

flow = Dataflow("files")
lines = op.input("lines", flow, FileSource("in_dir/a.txt", batch_size=2))
op.output("upper", op.map("up", lines, lambda s: ("k", s.upper())), FileSink("out.txt"))
run_main(flow)
with open("out.txt") as f:
    print(repr(f.read()))

flow = Dataflow("dir")
both = op.input("dir", flow, DirSource(Path("in_dir"), glob_pat="*.txt"))
got = []
op.output("out", both, TestingSink(got))
run_main(flow)
print(sorted(got))

flow = Dataflow("csv")
rows = op.input("csv", flow, CSVSource("data.csv"))
got = []
op.output("out", rows, TestingSink(got))
run_main(flow)
print(got)

flow = Dataflow("append")
lines = op.input("lines", flow, FileSource("in_dir/b.txt"))
op.output("again", op.key_on("k", lines, lambda s: "k"), FileSink("out.txt"))
run_main(flow)
with open("out.txt") as f:
    print(repr(f.read()))
