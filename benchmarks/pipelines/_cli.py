"""Run `cli_flows` through an engine's CLI and read back what its processes recorded.

Shared by ``cluster_bench.py`` and ``recovery_bench.py``. `run_cli` starts
``python -m headrace.run cli_flows:flow ...`` (or ``bytewax.run``), possibly
as several processes, with a fresh ``BENCH_SPAN_DIR``; when they exit it
returns one `CliRun`: the wall time from starting the first process to the
last one's exit, plus every process's `_span` record.

>>> import sys
>>> r = run_cli(sys.executable, "headrace", ["--metrics-port", "0"], "wordcount", 200, 2)
>>> r.ok, r.items_read, r.items_written, r.processes
(True, 200, 1000, 1)
>>> r.span > 0
True
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PIPELINES_DIR = Path(__file__).resolve().parent
CHILD_TIMEOUT_S = 900


def bytewax_python() -> Path:
    """The interpreter with Bytewax 0.21.1: ``run.py``'s venv, created on first use.

    ``run.py`` is loaded from its path: ``benchmarks/`` itself must stay off
    ``sys.path`` (its ``profile.py`` would shadow the standard library's).
    """
    spec = importlib.util.spec_from_file_location("_bench_run", PIPELINES_DIR.parent / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run  # dataclasses look their module up there
    spec.loader.exec_module(run)
    return Path(run.bytewax_python())


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (free when asked).

    >>> a, b = free_ports(2); a != b
    True
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def load_average() -> str:
    """The 1/5/15-minute load averages, e.g. ``'1.52 2.10 2.40'``.

    >>> len(load_average().split())
    3
    """
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


@dataclass
class CliRun:
    """One run of a dataflow through a CLI: wall time and every process's record."""

    wall: float
    records: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether every process exited 0 and at least one wrote a record.

        >>> CliRun(1.0).ok, CliRun(1.0, [{}], "boom").ok
        (False, False)
        """
        return self.error is None and bool(self.records)

    @property
    def processes(self) -> int:
        """How many processes read input (each writes one record).

        >>> CliRun(1.0, [{}, {}]).processes
        2
        """
        return len(self.records)

    @property
    def span(self) -> float:
        """Seconds from the earliest first read to the latest last write, over all processes.

        >>> CliRun(1.0, [{"first_read": 1.0, "last_write": 3.0},
        ...              {"first_read": 1.5, "last_write": 3.5}]).span
        2.5
        """
        return max(r["last_write"] for r in self.records) - min(r["first_read"] for r in self.records)

    @property
    def own_span(self) -> float:
        """The longest of the processes' own spans (first read to last write of each).

        For processes that run alone side by side, whose starts are not
        synchronised as a cluster's are.

        >>> CliRun(1.0, [{"first_read": 1.0, "last_write": 3.0},
        ...              {"first_read": 1.5, "last_write": 3.7}]).own_span
        2.2
        """
        return max(round(r["last_write"] - r["first_read"], 9) for r in self.records)

    @property
    def items_read(self) -> int:
        """Input items read by all processes.

        >>> CliRun(1.0, [{"items_read": 2}, {"items_read": 3}]).items_read
        5
        """
        return sum(r["items_read"] for r in self.records)

    @property
    def items_written(self) -> int:
        """Output items written by all processes.

        >>> CliRun(1.0, [{"items_written": 2}]).items_written
        2
        """
        return sum(r["items_written"] for r in self.records)

    def cpu(self) -> list[float]:
        """CPU seconds each process used from its first read to its exit.

        >>> CliRun(1.0, [{"cpu_first_read": 1.0, "cpu_exit": 1.5}]).cpu()
        [0.5]
        """
        return [r["cpu_exit"] - r["cpu_first_read"] for r in self.records]

    def metric(self, name: str) -> float:
        """An engine counter summed over the processes (0 when absent).

        >>> CliRun(1.0, [{"metrics": {"x": 2.0}}, {"metrics": {}}]).metric("x")
        2.0
        """
        return sum(r.get("metrics", {}).get(name, 0.0) for r in self.records)

    def metric_max(self, name: str) -> float:
        """The largest value of an engine gauge over the processes.

        >>> CliRun(1.0, [{"metrics": {"x": 2.0}}, {"metrics": {"x": 5.0}}]).metric_max("x")
        5.0
        """
        return max((r.get("metrics", {}).get(name, 0.0) for r in self.records), default=0.0)


def flow_env(engine: str, pipeline: str, items: int, parts: int, span_dir: str) -> dict[str, str]:
    """The environment that makes ``cli_flows:flow`` the wanted dataflow.

    Headrace runs from this checkout's ``runtime/``, whatever is installed.

    >>> env = flow_env("headrace", "wordcount", 10, 4, "/tmp/x")
    >>> env["BENCH_PIPELINE"], env["PYTHONPATH"].endswith("runtime")
    ('wordcount', True)
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    path = str(PIPELINES_DIR)
    if engine == "headrace":
        path += os.pathsep + str(PIPELINES_DIR.parents[1] / "runtime")
    env.update(
        BENCH_ENGINE=engine,
        BENCH_PIPELINE=pipeline,
        BENCH_ITEMS=str(items),
        BENCH_PARTS=str(parts),
        BENCH_SPAN_DIR=span_dir,
        PYTHONPATH=path,
    )
    return env


def run_cli(
    python: str | Path,
    engine: str,
    args: Sequence[str],
    pipeline: str,
    items: int,
    parts: int = 4,
    processes: int = 1,
    cwd: str | Path | None = None,
    split: bool = False,
) -> CliRun:
    """Run ``python -m <engine>.run cli_flows:flow *args`` and collect the records.

    ``processes > 1`` starts that many processes by hand with ``-i``/``-a``
    on free loopback ports (for an engine without ``-p``); Headrace's own
    ``-p`` goes in ``args`` instead. With ``split``, the processes are not a
    cluster: process ``i`` runs the pipeline alone on the partitions
    ``j % processes == i`` of the same ``parts`` (``BENCH_SHARD``), the
    items one cluster process would read, and nothing else (what the machine
    gives work that needs no exchange). A failure is returned, not raised.

    >>> import sys
    >>> run_cli(sys.executable, "headrace", ["--metrics-port", "0"], "nope", 1).error
    'exit 1: ...'
    >>> r = run_cli(sys.executable, "headrace", ["--metrics-port", "0"], "wordcount", 200, 2, 2,
    ...             split=True)
    >>> r.ok, r.items_read, r.processes
    (True, 200, 2)
    """
    span_dir = tempfile.mkdtemp(prefix="bench-span-")
    base = [str(python), "-m", f"{engine}.run", "cli_flows:flow", *args]
    env = flow_env(engine, pipeline, items, parts, span_dir)
    envs = [env] * max(1, processes)
    if split:
        envs = [{**env, "BENCH_SHARD": f"{i}/{processes}"} for i in range(processes)]
        cmds = [base] * processes
    elif processes > 1:
        addrs = ";".join(f"127.0.0.1:{p}" for p in free_ports(processes))
        cmds = [[*base, "-i", str(i), "-a", addrs] for i in range(processes)]
    else:
        cmds = [base]
    t0 = time.time()
    procs = [
        subprocess.Popen(cmd, env=e, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for cmd, e in zip(cmds, envs, strict=True)
    ]
    error = None
    for proc in procs:
        try:
            _out, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
            error = error or f"timed out after {CHILD_TIMEOUT_S} s"
        if proc.returncode != 0 and error is None:
            tail = " | ".join(err.strip().splitlines()[-4:])
            error = f"exit {proc.returncode}: {tail}"
    wall = time.time() - t0
    records = [json.loads(p.read_text()) for p in sorted(Path(span_dir).glob("*.json"))]
    shutil.rmtree(span_dir, ignore_errors=True)
    return CliRun(wall, records, error)


def select_sizes(defaults: dict[str, int], only: str | None, items: int | None) -> dict[str, int]:
    """The pipelines to run and their sizes: ``--only`` (comma-separated) and ``--items`` applied.

    >>> select_sizes({"a": 1, "b": 2}, "b", None), select_sizes({"a": 1, "b": 2}, None, 5)
    ({'b': 2}, {'a': 5, 'b': 5})
    >>> select_sizes({"a": 1}, "a,c", None)
    Traceback (most recent call last):
    ...
    ValueError: unknown pipeline(s) ['c']; choose from a
    """
    sizes = dict(defaults)
    if only:
        unknown = set(only.split(",")) - set(sizes)
        if unknown:
            raise ValueError(f"unknown pipeline(s) {sorted(unknown)}; choose from {', '.join(sizes)}")
        sizes = {k: v for k, v in sizes.items() if k in only.split(",")}
    if items:
        sizes = dict.fromkeys(sizes, items)
    return sizes


def best_median(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(max, median) of ``values``; ``(None, None)`` when empty.

    >>> best_median([1.0, 3.0, 2.0]), best_median([])
    ((3.0, 2.0), (None, None))
    """
    if not values:
        return None, None
    return max(values), statistics.median(values)


def rate(value: float | None) -> str:
    """Items per second, short: ``1.23M``, ``45.6k``, ``n/a``.

    >>> rate(1_234_567), rate(45_600), rate(None)
    ('1.23M', '45.6k', 'n/a')
    """
    if value is None:
        return "n/a"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    return f"{value / 1e3:.1f}k"


def num(value: float | None, fmt: str, unit: str = "") -> str:
    """``value`` formatted, or ``n/a``.

    >>> num(1.234, ".2f", "x"), num(None, ".2f")
    ('1.23x', 'n/a')
    """
    return "n/a" if value is None else format(value, fmt) + unit


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the rest right-aligned.

    >>> print(render(["a", "bb"], [["x", "1"], ["yy", "22"]]))
    a   bb
    x    1
    yy  22
    """
    lines = [list(header), *[list(r) for r in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    )
