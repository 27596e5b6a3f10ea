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

With ``--floor`` (Headrace's interpreter) the process times the pipeline's
``floor(n, sink)`` instead: the same user functions over the same batches
in a plain Python loop, no engine. After the timed run it runs the
dataflow on Headrace and the floor again, both into a `CollectingSink`,
and reports whether they wrote the same items (``floor_matches``); that
check is not timed (``--no-check`` skips it, for counting the floor's
instructions under valgrind, which counts the whole process).

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


def measure(name: str, items: int, floor: bool = False, check: bool = True) -> dict[str, object]:
    """Build pipeline ``name`` over ``items`` input items, run it, return the figures.

    >>> sorted(measure("map_filter_map", 10))[:3]
    ['engine', 'engine_version', 'items']
    >>> r = measure("wordcount", 200, floor=True)
    >>> r["engine"], r["out_count"], r["floor_matches"]
    ('floor', 1000, True)
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
    extra: dict[str, object] = {}
    if floor:
        if compat.ENGINE != "headrace" or not hasattr(pipeline, "floor"):
            raise SystemExit(f"--floor: {name} has no floor, or BENCH_ENGINE is not headrace")
        rss_before = peak_rss_mb()
        start = time.perf_counter()
        pipeline.floor(items, sink)
        seconds = time.perf_counter() - start
        rss_after, ru_after = peak_rss_mb(), _ru_maxrss_mb()
        if check:
            engine_out, floor_out = common.CollectingSink(), common.CollectingSink()
            compat.run_main(pipeline.build(items, engine_out))
            pipeline.floor(items, floor_out)
            # A keyed step's output order is the engine's business: compare sorted.
            extra["floor_matches"] = sorted(engine_out.items) == sorted(floor_out.items)
    else:
        flow = pipeline.build(items, sink)
        rss_before = peak_rss_mb()
        start = time.perf_counter()
        compat.run_main(flow)
        seconds = time.perf_counter() - start
        rss_after, ru_after = peak_rss_mb(), _ru_maxrss_mb()
    return {
        "engine": "floor" if floor else compat.ENGINE,
        "engine_version": metadata.version(compat.ENGINE),
        "items": items,
        "out_count": sink.count,
        "peak_rss_mb": round(rss_after, 1),
        "ru_maxrss_mb": round(ru_after, 1),
        "pipeline": name,
        "python": platform.python_version(),
        "rss_before_mb": round(rss_before, 1),
        "seconds": seconds,
        "items_per_s": items / seconds if seconds > 0 else float("inf"),
        **extra,
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    use_floor, check = "--floor" in args, "--no-check" not in args
    args = [a for a in args if a not in ("--floor", "--no-check")]
    if len(args) != 2:
        sys.exit(
            "usage: BENCH_ENGINE=headrace|bytewax python _measure.py PIPELINE ITEMS [--floor [--no-check]]"
        )
    print(json.dumps(measure(args[0], int(args[1]), use_floor, check)))
