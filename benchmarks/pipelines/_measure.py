"""One measurement in a fresh process: build a pipeline, run it, print one JSON line.

Run by `run.py` as ``BENCH_ENGINE=headrace|bytewax python _measure.py NAME ITEMS``
(with the interpreter that has that engine installed). Only the run itself
is timed; building the flow and importing the engine are not, and a
1-item warm-up flow runs first on both engines so that one-off setup an
engine defers to its first run (lazy imports) is not charged to the pipeline. Peak RSS is
the process's high-water mark, so it includes the interpreter and the
engine's imports; ``rss_before_mb`` is the same figure just before the run.

On Linux that mark is ``VmHWM`` from ``/proc/self/status``, not
``ru_maxrss``: ``ru_maxrss`` survives fork+exec, so a child started by a
bigger parent reports the parent's peak (``ru_maxrss_mb`` keeps it for
reference).

>>> import json, os, subprocess, sys
>>> env = dict(os.environ, BENCH_ENGINE="headrace")
>>> out = subprocess.run([sys.executable, __file__, "map_filter_map", "100"],
...                      env=env, capture_output=True, text=True, check=True).stdout
>>> json.loads(out)["out_count"]
50
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import sys
import time
from importlib import metadata

PIPELINES_DIR = os.path.dirname(os.path.abspath(__file__))


def _ru_maxrss_mb() -> float:
    # KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (``VmHWM`` where Linux has it).

    >>> 0 < peak_rss_mb() < 100_000
    True
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return _ru_maxrss_mb()


def _one(start: int, size: int) -> list[int]:
    return [start] * size


def measure(name: str, items: int) -> dict[str, object]:
    """Build pipeline ``name`` over ``items`` input items, run it, return the figures.

    >>> sorted(measure("map_filter_map", 10))[:3]
    ['engine', 'engine_version', 'items']
    """
    if PIPELINES_DIR not in sys.path:
        sys.path.insert(0, PIPELINES_DIR)
    compat = importlib.import_module("_compat")
    common = importlib.import_module("_common")
    pipeline = importlib.import_module(name)
    warm = compat.Dataflow("warm_up")
    warm_sink = common.CountingSink()
    compat.op.output("out", compat.op.input("inp", warm, common.GeneratedSource(1, _one)), warm_sink)
    compat.run_main(warm)
    sink = common.CountingSink()
    flow = pipeline.build(items, sink)
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    compat.run_main(flow)
    seconds = time.perf_counter() - start
    return {
        "engine": compat.ENGINE,
        "engine_version": metadata.version(compat.ENGINE),
        "items": items,
        "out_count": sink.count,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "ru_maxrss_mb": round(_ru_maxrss_mb(), 1),
        "pipeline": name,
        "python": platform.python_version(),
        "rss_before_mb": round(rss_before, 1),
        "seconds": seconds,
        "items_per_s": items / seconds if seconds > 0 else float("inf"),
    }


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: BENCH_ENGINE=headrace|bytewax python _measure.py PIPELINE ITEMS")
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
