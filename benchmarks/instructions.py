"""Scaling by instruction count: how much of ``-p 1``'s work the busiest ``-p 2`` process does.

    python benchmarks/instructions.py [--only tumbling_fold,wordcount] [--items N]
                                      [--flush-ms 600] [--json out.json]

Wall-clock speed-ups on a shared 2-core machine swing with the machine
(``cluster_bench.py`` measures the swing as its ``2 x -p 1 (split)``
ceiling). Instructions do not: this script runs the same configs as
``cluster_bench.py`` under valgrind (``cachegrind --cache-sim=no``, which
counts every instruction a process executes in user space) and reports
instructions per input item:

- ``-p 1``; ``-p 2`` (two processes, each counted); ``2 x -p 1 (split)``
  (two independent processes, each reading the partitions one ``-p 2``
  process reads, nothing exchanged).
- Every config runs at ``n`` and ``2n`` items; the per-item figure is the
  difference over ``n``, so interpreter start, imports and connecting are
  not counted.
- ``ideal speed-up`` = instructions of ``-p 1`` / those of the busiest
  process of a 2-process config: the wall-clock speed-up if instructions
  were all that cost and every process had a core. ``exchange cost`` =
  ``-p 2``'s total over the split's: everything the exchange adds.

What instructions miss: cache misses, the kernel (sockets, futexes,
context switches) and waiting. Under valgrind a process runs ~30-50x
slower, so time-based behaviour shifts; ``--flush-ms`` (default 600) keeps
about as many items per exchange flush as the native 20 ms. Needs
``valgrind`` (Debian: ``apt-get install valgrind``); takes ~2 minutes per
pipeline on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# `benchmarks/` must not be on sys.path: its profile.py would shadow the stdlib's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE / "pipelines"))

import _cli  # noqa: E402

ITEMS = {"wordcount": 20_000, "tumbling_fold": 100_000, "sliding_fold": 50_000}
CONFIGS = ("-p 1", "-p 2", "2 x -p 1 (split)")
_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def instructions(stderr: str) -> int:
    """The ``I refs`` total from cachegrind's report.

    >>> instructions("==1== \\n==1== I   refs:      2,338,475,742\\n")
    2338475742
    """
    m = _IREFS.search(stderr)
    if m is None:
        raise RuntimeError(f"no instruction count in valgrind's output: {stderr[-500:]!r}")
    return int(m.group(1).replace(",", ""))


def run(config: str, pipeline: str, items: int, flush_ms: int) -> list[int]:
    """Instructions of each process of one run of ``config`` (a failure raises)."""
    python = os.path.realpath(sys.executable)  # valgrind needs the binary, not a shim
    base = [
        python,
        "-m",
        "headrace.run",
        "cli_flows:flow",
        "--metrics-port",
        "0",
        "--exchange-flush-ms",
        str(flush_ms),
    ]
    span_dir = tempfile.mkdtemp(prefix="bench-instr-")
    env = _cli.flow_env("headrace", pipeline, items, 4, span_dir)
    if config == "-p 1":
        cmds, envs = [[*base, "-p", "1"]], [env]
    elif config == "-p 2":
        addrs = ";".join(f"127.0.0.1:{p}" for p in _cli.free_ports(2))
        cmds = [[*base, "-i", str(i), "-a", addrs] for i in range(2)]
        envs = [env, env]
    else:
        cmds = [[*base, "-p", "1"]] * 2
        envs = [{**env, "BENCH_SHARD": f"{i}/2"} for i in range(2)]
    procs = [
        subprocess.Popen(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null", *cmd],
            env=e,
            cwd=HERE / "pipelines",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cmd, e in zip(cmds, envs, strict=True)
    ]
    counts = []
    try:
        for proc in procs:
            _out, err = proc.communicate(timeout=_cli.CHILD_TIMEOUT_S)
            if proc.returncode != 0:
                raise RuntimeError(f"{config} {pipeline} exited {proc.returncode}: {err[-800:]}")
            counts.append(instructions(err))
    finally:
        for proc in procs:
            proc.kill()
        shutil.rmtree(span_dir, ignore_errors=True)
    return counts


def per_item(small: list[int], large: list[int], n: int) -> list[float]:
    """Each process's instructions per extra input item between a run of n and one of 2n.

    >>> per_item([100, 120], [300, 330], 10)
    [20.0, 21.0]
    """
    return [(b - a) / n for a, b in zip(small, large, strict=True)]


def summary(pipeline: str, counts: dict[str, list[float]]) -> list[str]:
    """The table rows and the verdict lines for one pipeline.

    >>> for line in summary("wc", {"-p 1": [100.0], "-p 2": [52.0, 51.0],
    ...                            "2 x -p 1 (split)": [50.0, 50.0]}):
    ...     print(line)
    wc            -p 1                    100.0    100.0   1.00x
    wc            -p 2                    103.0     52.0   1.92x
    wc            2 x -p 1 (split)        100.0     50.0   2.00x
    wc: exchange cost 3.0% of the work; -p 2 does 96% of the split's ideal speed-up
    """
    one = counts["-p 1"][0]
    rows = []
    for config in CONFIGS:
        c = counts[config]
        rows.append(f"{pipeline:12s}  {config:20s} {sum(c):8.1f} {max(c):8.1f} {one / max(c):6.2f}x")
    p2, split = counts["-p 2"], counts["2 x -p 1 (split)"]
    rows.append(
        f"{pipeline}: exchange cost {(sum(p2) / sum(split) - 1) * 100:.1f}% of the work; "
        f"-p 2 does {max(split) / max(p2) * 100:.0f}% of the split's ideal speed-up"
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated pipelines (default: all)")
    parser.add_argument("--items", type=int, help="n for every pipeline (runs n and 2n)")
    parser.add_argument("--flush-ms", type=int, default=600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    try:
        sizes = _cli.select_sizes(ITEMS, args.only, args.items)
    except ValueError as exc:
        parser.error(str(exc))
    results: dict[str, dict[str, list[float]]] = {}
    lines = [
        f"{'pipeline':12s}  {'config':20s} {'total':>8s} {'busiest':>8s} {'ideal':>7s}"
        "   (instructions per input item)"
    ]
    for pipeline, n in sizes.items():
        counts = {}
        for config in CONFIGS:
            small, large = (
                run(config, pipeline, n, args.flush_ms),
                run(config, pipeline, 2 * n, args.flush_ms),
            )
            counts[config] = per_item(small, large, n)
            print(
                f"{pipeline} {config}: {[round(c, 1) for c in counts[config]]} instructions/item", flush=True
            )
        results[pipeline] = counts
        lines += summary(pipeline, counts)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(
            json.dumps({"sizes": sizes, "flush_ms": args.flush_ms, "per_item": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
