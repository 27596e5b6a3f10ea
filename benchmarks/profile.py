"""Profile one pipeline on Headrace: cProfile, top functions by own time.

    python benchmarks/profile.py NAME [--items N] [--top 25] [--sort tottime] [--save out.prof]

Builds the pipeline exactly as `run.py` does and profiles only the
``run_main`` call. Default size is a quarter of the benchmark's, since
profiling slows Python code a few times over.

>>> main(["map_filter_map", "--items", "2000", "--top", "3"])  # doctest: +ELLIPSIS
map_filter_map on headrace: 2,000 items, 1,000 out, ... s under cProfile
...
0
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PIPELINES_DIR = HERE / "pipelines"

# This file is named like the standard library's `profile`, which cProfile
# imports: take its folder off sys.path before importing cProfile.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(PIPELINES_DIR))
os.environ["BENCH_ENGINE"] = "headrace"

import argparse  # noqa: E402
import cProfile  # noqa: E402
import importlib  # noqa: E402
import pstats  # noqa: E402
import time  # noqa: E402

PIPELINES = ["map_filter_map", "wordcount", "running_mean", "tumbling_fold", "sliding", "session"]


def main(argv: list[str] | None = None) -> int:
    """Profile the named pipeline and print its top functions.

    >>> main(["nope"])
    Traceback (most recent call last):
    ...
    SystemExit: unknown pipeline 'nope'; choose from map_filter_map, ...
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="pipeline module under benchmarks/pipelines/")
    parser.add_argument("--items", type=int, help="input items (default: a quarter of run.py's)")
    parser.add_argument("--top", type=int, default=25, help="functions to print (default 25)")
    parser.add_argument("--sort", default="tottime", help="pstats sort key (default tottime)")
    parser.add_argument("--save", type=Path, help="also dump the raw profile here (for snakeviz)")
    args = parser.parse_args(argv)
    if args.name not in PIPELINES:
        raise SystemExit(f"unknown pipeline {args.name!r}; choose from {', '.join(PIPELINES)}")

    compat = importlib.import_module("_compat")
    common = importlib.import_module("_common")
    pipeline = importlib.import_module(args.name)
    items = args.items or max(1000, pipeline.DEFAULT_ITEMS // 4)
    sink = common.CountingSink()
    flow = pipeline.build(items, sink)

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(compat.run_main, flow)
    seconds = time.perf_counter() - start
    print(f"{args.name} on headrace: {items:,} items, {sink.count:,} out, {seconds:.2f} s under cProfile")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats(args.sort).print_stats(args.top)
    if args.save:
        stats.dump_stats(args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
