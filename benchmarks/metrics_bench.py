"""Overhead of Headrace's Prometheus metrics: wordcount with metrics on vs off.

    python benchmarks/metrics_bench.py [--quick] [--repeat 3] [--items N] [--pipelines wordcount,...]
                                       [--json out.json]

Each measurement is a fresh process (this script with ``--child``) that
imports the single-worker benchmark pipeline, runs a 1-item warm-up flow,
builds the flow and times one
``headrace._engine.execute(flow, metrics=True|False)`` with
``perf_counter``, exactly as ``run.py`` times ``run_main`` (which is
``execute`` with metrics on). On and off alternate (on off, off on, ...) so
drift of a shared machine hits both. No metrics server is started: the
cost measured is recording the series (per batch, per step), which is what
a run pays whether or not anything scrapes it.

Overhead = 1 - (items/s with metrics) / (items/s without), from the best
runs and from the medians. Target: <= 5%. Rates are shown per second of
wall time and per second of the process's CPU time (``process_time``;
the run is single-threaded): on a shared machine a process that is
descheduled loses wall time but not CPU time, so the CPU rows are the
steadier of the two when other work competes for the cores.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PIPELINES_DIR = HERE / "pipelines"
# `benchmarks/` must not be on sys.path: its profile.py would shadow the stdlib's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(PIPELINES_DIR))
os.environ["BENCH_ENGINE"] = "headrace"

import _cli  # noqa: E402

TARGET = 0.05
DEFAULT_PIPELINES = ("wordcount",)
# Longer than run.py's 300,000 lines: a 5% difference needs runs of a few seconds.
ITEMS = {"wordcount": 1_000_000}
QUICK_ITEMS = 50_000


def child(pipeline: str, items: int, metrics: bool) -> dict[str, Any]:
    """Time one run of ``pipeline`` in this process (what ``--child`` does).

    >>> r = child("wordcount", 200, metrics=False)
    >>> r["metrics"], r["out_count"]
    (False, 1000)
    """
    from headrace._engine import execute

    common = importlib.import_module("_common")
    compat = importlib.import_module("_compat")
    module = importlib.import_module(pipeline)
    warm = compat.Dataflow("warm_up")
    compat.op.output(
        "out",
        compat.op.input("inp", warm, common.GeneratedSource(1, lambda s, n: [s] * n)),
        common.CountingSink(),
    )
    execute(warm, metrics=metrics)
    sink = common.CountingSink()
    flow = module.build(items, sink)
    cpu0, start = time.process_time(), time.perf_counter()
    execute(flow, metrics=metrics)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {
        "pipeline": pipeline,
        "items": items,
        "metrics": metrics,
        "seconds": seconds,
        "items_per_s": items / seconds,
        "cpu_seconds": cpu,
        "items_per_cpu_s": items / cpu,
        "out_count": sink.count,
    }


def measure_once(pipeline: str, items: int, metrics: bool) -> dict[str, Any]:
    """One measurement in a fresh process; a failure is returned, not raised.

    >>> measure_once("wordcount", 200, True)["out_count"]
    1000
    >>> "error" in measure_once("no_such_pipeline", 1, True)
    True
    """
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "on" if metrics else "off",
        "--pipelines",
        pipeline,
        "--items",
        str(items),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=_cli.CHILD_TIMEOUT_S)
    if done.returncode != 0:
        return {
            "pipeline": pipeline,
            "metrics": metrics,
            "error": " | ".join(done.stderr.strip().splitlines()[-4:]),
        }
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summarize(runs: list[dict[str, Any]], field: str = "items_per_s") -> dict[str, Any]:
    """Best/median of ``field`` with metrics on and off, and the overhead from each.

    >>> s = summarize([{"metrics": True, "items_per_s": 95.0}, {"metrics": False, "items_per_s": 100.0}])
    >>> round(s["overhead_best"], 3), s["verdict"]
    (0.05, 'ok')
    """
    on = [r[field] for r in runs if r.get("metrics") is True and "error" not in r]
    off = [r[field] for r in runs if r.get("metrics") is False and "error" not in r]
    out: dict[str, Any] = {
        "on_best": max(on, default=None),
        "off_best": max(off, default=None),
        "on_median": statistics.median(on) if on else None,
        "off_median": statistics.median(off) if off else None,
    }
    for kind in ("best", "median"):
        a, b = out[f"on_{kind}"], out[f"off_{kind}"]
        out[f"overhead_{kind}"] = 1 - a / b if a and b else None
    ob = out["overhead_best"]
    out["verdict"] = "n/a" if ob is None else ("ok" if ob <= TARGET + 1e-9 else "MISS")
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the table; 0 unless a run failed.

    >>> main(["--quick", "--items", "300"])  # doctest: +ELLIPSIS
    Metrics overhead, best of 1 ...
    wordcount  300  wall ...
    wordcount  300   CPU ...
    0
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small input, one repeat")
    parser.add_argument("--repeat", type=int, help="runs per setting (default 3, --quick 1)")
    parser.add_argument("--items", type=int, help="input items")
    parser.add_argument(
        "--pipelines",
        default=",".join(DEFAULT_PIPELINES),
        help="single-worker pipelines (benchmarks/pipelines/NAME.py)",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.pipelines, args.items, args.child == "on")))
        return 0
    repeat = args.repeat or (1 if args.quick else 3)
    names = args.pipelines.split(",")
    load_before = _cli.load_average()
    started = time.time()
    results: dict[str, list[dict[str, Any]]] = {}
    total, done = len(names) * repeat * 2, 0
    for name in names:
        default = ITEMS.get(name) or importlib.import_module(name).DEFAULT_ITEMS
        items = args.items or (QUICK_ITEMS if args.quick else default)
        runs = results.setdefault(name, [])
        for rep in range(repeat):
            for metrics in (True, False) if rep % 2 == 0 else (False, True):
                done += 1
                r = measure_once(name, items, metrics)
                runs.append(r)
                msg = r.get("error") or f"{_cli.rate(r['items_per_s'])} items/s, {r['seconds']:.2f} s"
                print(
                    f"[{done}/{total}] {name} metrics {'on ' if metrics else 'off'}: {msg}  "
                    f"(load {_cli.load_average()})",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"Metrics overhead, best of {repeat} (median in parentheses); {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; took {time.time() - started:.0f} s; load average "
        f"before {load_before}, after {_cli.load_average()}"
    )
    rows, failed, summaries = [], False, {}
    for name, runs in results.items():
        for field, what in (("items_per_s", "wall"), ("items_per_cpu_s", "CPU")):
            s = summaries[f"{name} {what}"] = summarize(runs, field)
            rows.append(
                [
                    name,
                    f"{runs[0].get('items', 0):,}",
                    what,
                    f"{_cli.rate(s['off_best'])} ({_cli.rate(s['off_median'])})",
                    f"{_cli.rate(s['on_best'])} ({_cli.rate(s['on_median'])})",
                    f"{_cli.num(s['overhead_best'], '.1%')} ({_cli.num(s['overhead_median'], '.1%')})",
                    f"<= {TARGET:.0%}",
                    s["verdict"],
                ]
            )
        for r in runs:
            if "error" in r:
                failed = True
                rows.append(
                    [f"  failed ({'on' if r['metrics'] else 'off'})", r["error"], "", "", "", "", "", ""]
                )
    print(
        _cli.render(
            [
                "pipeline",
                "items",
                "time",
                "metrics off/s best (med)",
                "metrics on/s best (med)",
                "overhead best (med)",
                "target",
                "verdict",
            ],
            rows,
        )
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "load_before": load_before,
                    "runs": results,
                    "summary": summaries,
                },
                indent=1,
            )
            + "\n"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
