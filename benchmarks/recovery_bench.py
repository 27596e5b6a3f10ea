"""Cost of recovery: snapshots every second (Redis, SQLite) vs none; restoring 1M keys.

    python benchmarks/recovery_bench.py [--quick] [--repeat 3] [--items N] [--keys N]
                                        [--engines headrace,bytewax] [--skip-throughput]
                                        [--skip-large] [--skip-restore] [--json out.json]
                                        [--thread] [--before CHECKOUT]

**Throughput.** The single-worker ``wordcount`` (via ``pipelines/cli_flows.py``,
one source partition) runs through each engine's CLI in a fresh process:
Headrace ``python -m headrace.run cli_flows:flow --metrics-port 0`` with no
recovery, with ``-r redis://127.0.0.1:PORT/0 -s 1`` (a redis-server this
script starts on a free port: append-only file, fsync every second) and
with ``-r DIR -s 1`` (SQLite); Bytewax ``python -m bytewax.run`` without
recovery and with ``-r DIR -s 1`` after ``python -m bytewax.recovery DIR
1``. Every run starts from an empty store. Throughput is input items over
the dataflow's span (first read to last write, recorded inside the
process, see ``pipelines/_span.py``); the ratio is against the same
engine without recovery. Snapshot figures come from Headrace's own
counters (``headrace_snapshot_bytes_total``, ``snapshot_duration_seconds``,
``headrace_recovery_store_latency_seconds``, ``headrace_epoch_committed``)
read just before the process exits. ``disk MB``: the SQLite recovery
directory's size after the run (both engines).

**Large state.** The same ``stateful_map`` over N distinct keys (default
1,000,000; ``BENCH_PIPELINE=restore``), each changing once, so every
1-second epoch's snapshot holds 100k-200k changed keys: without recovery
and with Redis, ``repeat`` runs each, alternating. Reported: the span
(ratio against no recovery; target <= 1.15x), the worker thread's CPU
time (the main thread of a ``-p 1`` run: less noisy than the span on a
shared machine) and what snapshots add to it per epoch, and the time the
worker waited for its snapshot writer. The runs without recovery also give
the resident memory of holding the N keys (at exit). ``--thread`` adds
Redis with large epochs written by the writer thread instead of a forked
child (``HEADRACE_SNAPSHOT_FORK=0``), ``--before CHECKOUT`` Redis with the
engine of another checkout (e.g. a ``git worktree`` of an older commit),
interleaved with the others.

**Restore.** A ``stateful_map`` running sum over N distinct keys (default
1,000,000) is run once with ``-s 1`` to fill a store. The store is then
copied aside, and each repeat puts that copy back and starts a resumed run:
its source has nothing left to read, so it emits one probe item for an
existing key. *Restore* is the time from importing the dataflow module
(just before the engine starts) to the probe reaching the sink: opening the
store, loading every key group, and whatever the engine does with the
state before the first item (a `stateful_map` keeps it pickled and builds
a key's logic at its first item). The
same measure on an empty store (``BENCH_ITEMS=0``) is the baseline; ``net``
subtracts it. ``run`` is the resumed run to the process's exit (it also
writes the last epoch's snapshot). ``peak MB``: the resumed process's peak
RSS, against holding the keys (target <= 1.2x). Target (Headrace): under 2 s.
With ``--before CHECKOUT`` each Headrace resume also runs with that
checkout's engine, alternating with this one's on the same stored state
(rows ``... before``): a before/after comparison under the same load. The engines' processes
share a bytecode cache of their own (``PYTHONPYCACHEPREFIX``, a temp dir),
as an installed engine has its ``.pyc`` files, even where
``PYTHONDONTWRITEBYTECODE`` is set. Bytewax's
SQLite restore runs at 100,000 keys by default (``--bytewax-keys``): its
resume time grows faster than linearly in the keys (about 0.1 s at 10k,
5.6 s at 100k, 54 s at 300k when this was written).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# `benchmarks/` must not be on sys.path: its profile.py would shadow the stdlib's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE / "pipelines"))

import _cli  # noqa: E402

RATIO_TARGET = 0.90
RESTORE_TARGET_S = 2.0
ITEMS, QUICK_ITEMS = 2_000_000, 200_000
KEYS, QUICK_KEYS = 1_000_000, 100_000
BYTEWAX_KEYS, QUICK_BYTEWAX_KEYS = 100_000, 20_000


class RedisServer:
    """A redis-server on a free loopback port, data in a temporary directory.

    >>> server = RedisServer()
    >>> _ = server.client.set("k", "v"); saved = server.dump(); server.flush()
    >>> server.load(saved); server.client.get("k")
    b'v'
    >>> server.stop()
    """

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.port = _cli.free_ports(1)[0]
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir,
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
        import redis

        self.client = redis.Redis(port=self.port)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (see the class example)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        """Empty the database (see the class example)."""
        self.client.flushall()

    def dump(self) -> dict[bytes, bytes]:
        """Every key's serialized value, to put the same data back later (see the class example)."""
        keys = list(self.client.scan_iter(count=1000))
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.dump(k)
        return dict(zip(keys, pipe.execute(), strict=True))

    def load(self, dumped: dict[bytes, bytes]) -> None:
        """Replace the database's contents with ``dumped`` (see the class example)."""
        self.flush()
        pipe = self.client.pipeline(transaction=False)
        for k, v in dumped.items():
            pipe.restore(k, 0, v)
        pipe.execute()

    def stop(self) -> None:
        """Stop the server, remove its files (see the class example)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _dir_mb(path: str) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 1e6


def _show(location: str, flow_id: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "headrace.recovery", "show", location, "--flow-id", flow_id],
        capture_output=True,
        text=True,
        check=True,
    )
    info: dict[str, Any] = json.loads(done.stdout)
    return info


@dataclass
class Store:
    """How one config keeps snapshots: CLI arguments for a fresh store, and cleanup.

    >>> Store("headrace none", "headrace", lambda: []).fresh()
    []
    """

    label: str
    engine: str
    fresh: Callable[[], list[str]]  # prepares an empty store, returns the CLI arguments
    location: Callable[[], str | None] = lambda: None
    # put a saved copy back / save a copy (restore benchmark)
    save: Callable[[], Any] | None = None
    put_back: Callable[[Any], None] | None = None
    # environment variables of its runs, and another Python (large state only)
    env: dict[str, str] = field(default_factory=dict)
    python: str | None = None


TEMP_DIRS: list[str] = []  # removed when main() ends


def make_stores(engines: list[str], bytewax: Path | None, redis_server: RedisServer | None) -> list[Store]:
    """The configs of this run, each able to make an empty store.

    >>> stores = make_stores(["headrace"], None, None)
    >>> [s.label for s in stores]
    ['headrace none', 'headrace sqlite']
    >>> stores[1].fresh()[0], stores[1].location() is not None
    ('-r', True)
    """
    stores: list[Store] = []
    state: dict[str, str] = {}

    def new_dir() -> str:
        old = state.get("dir")
        if old:
            shutil.rmtree(old, ignore_errors=True)
        state["dir"] = tempfile.mkdtemp(prefix="bench-recovery-")
        TEMP_DIRS.append(state["dir"])
        return state["dir"]

    def save_dir() -> str:
        copy = tempfile.mkdtemp(prefix="bench-recovery-copy-")
        shutil.copytree(state["dir"], copy, dirs_exist_ok=True)
        return copy

    def put_back_dir(copy: str) -> None:
        shutil.rmtree(state["dir"], ignore_errors=True)
        shutil.copytree(copy, state["dir"])

    if "headrace" in engines:
        hr = ["--metrics-port", "0"]
        stores.append(Store("headrace none", "headrace", lambda: list(hr)))
        if redis_server is not None:
            server = redis_server

            def fresh_redis() -> list[str]:
                server.flush()
                return ["-r", server.url, "-s", "1", *hr]

            stores.append(
                Store("headrace redis", "headrace", fresh_redis, lambda: server.url, server.dump, server.load)
            )

        def fresh_dir() -> list[str]:
            from headrace.recovery import init_db_dir

            d = new_dir()
            init_db_dir(d, 1)  # a directory must hold its part files before a run
            return ["-r", d, "-s", "1", *hr]

        stores.append(
            Store("headrace sqlite", "headrace", fresh_dir, lambda: state.get("dir"), save_dir, put_back_dir)
        )
    if "bytewax" in engines and bytewax is not None:
        bw = bytewax

        def fresh_bytewax() -> list[str]:
            d = new_dir()
            subprocess.run([str(bw), "-m", "bytewax.recovery", d, "1"], check=True, capture_output=True)
            return ["-w", "1", "-r", d, "-s", "1", "-b", "0"]

        stores.append(Store("bytewax none", "bytewax", lambda: ["-w", "1"]))
        stores.append(
            Store(
                "bytewax sqlite", "bytewax", fresh_bytewax, lambda: state.get("dir"), save_dir, put_back_dir
            )
        )
    return stores


@dataclass
class Cell:
    """The repeats of one config in the throughput benchmark.

    >>> run = _cli.CliRun(1.0, [{"first_read": 0.0, "last_write": 2.0}])
    >>> cell = Cell(Store("x", "headrace", list), 10, [run])
    >>> cell.rates(), cell.med(lambda r: r.span)
    ((5.0, 5.0), 2.0)
    """

    store: Store
    items: int
    runs: list[_cli.CliRun] = field(default_factory=list)
    disk_mb: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def good(self) -> list[_cli.CliRun]:
        """The runs that succeeded.

        >>> Cell(Store("x", "headrace", list), 1, [_cli.CliRun(1.0, [], "boom")]).good()
        []
        """
        return [r for r in self.runs if r.ok]

    def rates(self) -> tuple[float | None, float | None]:
        """Best and median items/s over the dataflow's span (see the class example)."""
        return _cli.best_median([self.items / r.span for r in self.good()])

    def med(self, fn: Callable[[_cli.CliRun], float | None]) -> float | None:
        """Median of ``fn(run)`` over the good runs where it is not ``None``.

        >>> Cell(Store("x", "headrace", list), 1).med(lambda r: r.wall) is None
        True
        """
        values = [v for r in self.good() if (v := fn(r)) is not None]
        return sorted(values)[len(values) // 2] if values else None


def _per_snapshot(run: _cli.CliRun, total: str) -> float | None:
    count = run.metric("snapshot_duration_seconds_count")
    return run.metric(total) / count if count else None


def throughput(stores: list[Store], pythons: dict[str, Any], items: int, repeat: int) -> list[Cell]:
    """Run wordcount ``repeat`` times per config, configs alternating.

    >>> stores = make_stores(["headrace"], None, None)
    >>> cells = throughput(stores, {"headrace": sys.executable}, 300, 1)
    >>> [(c.store.label, c.good()[0].items_read) for c in cells]
    [('headrace none', 300), ('headrace sqlite', 300)]
    >>> print(throughput_table(cells))  # doctest: +ELLIPSIS
    config ... disk MB
    headrace none ...
    headrace sqlite ...
    """
    cells = [Cell(s, items) for s in stores if s.python is None and not s.env]  # not the large-state variants
    total, done = len(cells) * repeat, 0
    for rep in range(repeat):
        for cell in cells if rep % 2 == 0 else cells[::-1]:
            s = cell.store
            done += 1
            args = s.fresh()
            run = _cli.run_cli(pythons[s.engine], s.engine, args, "wordcount", items, parts=1)
            if run.ok and (run.items_read != items or run.items_written != 1000):
                run.error = f"read {run.items_read:,}, wrote {run.items_written:,}"
            if run.error:
                cell.problems.append(run.error)
            cell.runs.append(run)
            loc = s.location()
            if run.ok and loc is not None and "://" not in loc:
                cell.disk_mb.append(_dir_mb(loc))
            msg = run.error or (
                f"{_cli.rate(items / run.span)} items/s, span {run.span:.2f} s, wall {run.wall:.2f} s"
            )
            print(
                f"[{done}/{total}] wordcount {s.label}: {msg}  (load {_cli.load_average()})",
                file=sys.stderr,
                flush=True,
            )
    return cells


def throughput_table(cells: list[Cell]) -> str:
    """Rates, ratio to no recovery, snapshot figures (see `throughput`'s example)."""
    base = {c.store.engine: c for c in cells if c.store.label.endswith(" none")}
    rows = []
    for c in cells:
        best, med = c.rates()
        b = base.get(c.store.engine)
        bb, bm = b.rates() if b is not None else (None, None)
        epochs = c.med(lambda r: r.metric_max("headrace_epoch_committed") or None)
        snaps = c.med(lambda r: r.metric("snapshot_duration_seconds_count") or None)
        per_kb = c.med(
            lambda r: (v / 1e3) if (v := _per_snapshot(r, "headrace_snapshot_bytes_total")) else None
        )
        snap_ms = c.med(
            lambda r: (v * 1e3) if (v := _per_snapshot(r, "snapshot_duration_seconds_sum")) else None
        )
        rows.append(
            [
                c.store.label,
                f"{_cli.rate(best)} ({_cli.rate(med)})",
                f"{_cli.num(best / bb if best and bb else None, '.1%')} "
                f"({_cli.num(med / bm if med and bm else None, '.1%')})",
                _cli.num(epochs, ".0f"),
                _cli.num(snaps, ".0f"),
                _cli.num(per_kb, ".1f"),
                _cli.num(snap_ms, ".1f"),
                f"{sorted(c.disk_mb)[len(c.disk_mb) // 2]:.2f}" if c.disk_mb else "",
                "FAILED" if c.problems else "",
            ]
        )
    return _cli.render(
        [
            "config",
            "items/s best (med)",
            "vs none best (med)",
            "epochs",
            "snapshots",
            "kB/snapshot",
            "ms/snapshot",
            "disk MB",
            "",
        ],
        rows,
    )


LARGE_TARGET = 1.15
RSS_TARGET = 1.2


def large_state(
    stores: list[Store], pythons: dict[str, Any], keys: int, repeat: int
) -> tuple[list[Cell], dict[str, list[float]]]:
    """The ``restore`` pipeline over ``keys`` distinct keys, without recovery and with Redis.

    Every key changes once, so each epoch's snapshot holds the keys of that
    epoch (about 100k-200k here): the cost of snapshotting large state.
    Runs alternate, ``repeat`` of each. Also returns the resident memory
    (MB) of the runs without recovery at exit: the cost of holding the state.

    >>> stores = make_stores(["headrace"], None, None)
    >>> cells, held = large_state(stores, {"headrace": sys.executable}, 300, 1)
    >>> [(c.store.label, c.good()[0].items_written) for c in cells], len(held["rss"])
    ([('headrace none', 300)], 1)
    """
    picked = [s for s in stores if s.label == "headrace none" or s.label.startswith("headrace redis")]
    cells = [Cell(s, keys) for s in picked]
    held: dict[str, list[float]] = {"rss": [], "peak": []}
    total, done = len(cells) * repeat, 0
    for rep in range(repeat):
        for cell in cells if rep % 2 == 0 else cells[::-1]:
            done += 1
            saved = {k: os.environ.get(k) for k in cell.store.env}
            os.environ.update(cell.store.env)
            try:
                python = cell.store.python or pythons["headrace"]
                run = _cli.run_cli(python, "headrace", cell.store.fresh(), "restore", keys, parts=1)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            if run.ok and run.items_written != keys:
                run.error = f"wrote {run.items_written:,} of {keys:,}"
            if run.error:
                cell.problems.append(run.error)
            elif cell.store.label == "headrace none":
                held["rss"].append(run.records[0].get("rss_mb") or 0.0)
                held["peak"].append(run.records[0].get("peak_rss_mb") or 0.0)
            cell.runs.append(run)
            msg = run.error or f"span {run.span:.2f} s, worker thread CPU {_thread_cpu(run):.2f} s"
            print(
                f"[{done}/{total}] large state {cell.store.label}: {msg}  (load {_cli.load_average()})",
                file=sys.stderr,
                flush=True,
            )
    return cells, held


def _variants(stores: list[Store], thread: bool, before: Path | None) -> list[Store]:
    """More Redis configs for the large-state runs: the writer thread, another checkout's engine.

    >>> stores = [Store("headrace redis", "headrace", list)]
    >>> [(s.label, s.env) for s in _variants(stores, True, None)]
    [('headrace redis thread', {'HEADRACE_SNAPSHOT_FORK': '0'})]
    """
    redis_store = next((s for s in stores if s.label == "headrace redis"), None)
    if redis_store is None:
        return []
    out = []
    if thread:
        out.append(replace(redis_store, label="headrace redis thread", env={"HEADRACE_SNAPSHOT_FORK": "0"}))
    if before is not None:
        out.append(replace(redis_store, label="headrace redis before", python=_before_python(before)))
    return out


def _before_python(before: Path) -> str:
    """A Python that runs the engine of checkout ``before`` (its ``runtime/``) for ``--before``.

    >>> here = Path(__file__).resolve().parents[1]
    >>> open(_before_python(here)).read().startswith("#!/bin/sh")
    True
    """
    runtime = before.resolve() / "runtime"
    if not (runtime / "headrace").is_dir():
        raise SystemExit(f"--before {before}: no runtime/headrace there")
    wrapper = Path(tempfile.mkdtemp(prefix="bench-before-")) / "python"
    TEMP_DIRS.append(str(wrapper.parent))
    # `flow_env` puts this checkout's runtime on PYTHONPATH: the other one goes first.
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{runtime}:$PYTHONPATH" exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _thread_cpu(run: _cli.CliRun) -> float:
    return float(run.records[0].get("cpu_thread_exit") or 0.0)


def _epochs(run: _cli.CliRun) -> float | None:
    return run.metric_max("headrace_epoch_committed") or run.metric_max("headrace_epoch_current") or None


def large_table(cells: list[Cell]) -> str:
    """Span, ratio to no recovery, the worker thread's CPU time (see `large_state`'s example)."""
    base = next((c for c in cells if c.store.label == "headrace none"), None)
    rows = []
    for c in cells:
        spans = sorted(r.span for r in c.good())
        best, med = (spans[0], spans[len(spans) // 2]) if spans else (None, None)
        bb = base.med(lambda r: r.span) if base is not None else None
        b_best = min((r.span for r in base.good()), default=None) if base is not None else None
        cpu = c.med(_thread_cpu)
        proc_cpu = c.med(lambda r: r.records[0].get("cpu_exit"))
        base_cpu = base.med(_thread_cpu) if base is not None and c is not base else None
        # What snapshots add to the worker thread per epoch, against the median run without.
        per_epoch = None
        if base_cpu is not None:
            added = [(_thread_cpu(r) - base_cpu) / e for r in c.good() if (e := _epochs(r))]
            per_epoch = sorted(added)[len(added) // 2] if added else None
        snap_ms = c.med(
            lambda r: (v * 1e3) if (v := _per_snapshot(r, "snapshot_duration_seconds_sum")) else None
        )
        waited = c.med(lambda r: r.metric("headrace_worker_backpressure_seconds_total"))
        rows.append(
            [
                c.store.label,
                f"{_cli.num(best, '.2f')} ({_cli.num(med, '.2f')})",
                f"{_cli.num(best / b_best if best and b_best else None, '.2f')}x "
                f"({_cli.num(med / bb if med and bb else None, '.2f')}x)",
                _cli.num(cpu, ".2f"),
                _cli.num(proc_cpu, ".2f"),
                _cli.num(per_epoch * 1e3 if per_epoch else None, ".0f"),
                _cli.num(c.med(_epochs), ".0f"),
                _cli.num(snap_ms, ".0f"),
                _cli.num(waited, ".2f"),
                "FAILED" if c.problems else "",
            ]
        )
    return _cli.render(
        [
            "config",
            "span s best (med)",
            "vs none best (med)",
            "thread CPU s",
            "process CPU s",
            "+CPU ms/epoch",
            "epochs",
            "ms/snapshot",
            "waited s",
            "",
        ],
        rows,
    )


@dataclass
class Restore:
    """Restore measurements of one store (see `restore`'s example)."""

    store: Store
    keys: int
    python: str | None = None  # another checkout's engine (``--before``), or this one's
    label: str = ""
    build_span: float | None = None
    build_wall: float | None = None
    stored_keys: int | None = None
    baseline: list[float] = field(default_factory=list)
    first_out: list[float] = field(default_factory=list)
    run: list[float] = field(default_factory=list)
    peak_mb: list[float] = field(default_factory=list)  # the resumed process's peak RSS
    problems: list[str] = field(default_factory=list)


def _to_first_output(run: _cli.CliRun) -> float:
    rec = run.records[0]
    return float(rec["first_write"] - rec["t_import"])


def restore(
    stores: list[Store],
    pythons: dict[str, Any],
    hr_keys: int,
    bw_keys: int,
    repeat: int,
    before: str | None = None,
) -> list[Restore]:
    """Fill each store with keys once; time ``repeat`` resumes from a copy of it.

    With ``before`` (a Python running another checkout's engine, see
    `_before_python`), each Headrace resume is also run with that engine,
    alternating with this one's, on the same copy of the store (filled by
    this checkout). The large-state variants (`_variants`) are left out.

    >>> stores = make_stores(["headrace"], None, None)
    >>> here = Path(__file__).resolve().parents[1]
    >>> base, r = restore(stores, {"headrace": sys.executable}, 500, 500, 1, _before_python(here))
    >>> r.stored_keys, len(r.first_out), r.problems, base.label, len(base.first_out), base.problems
    (500, 1, [], 'headrace sqlite before', 1, [])
    >>> print(restore_table([r]))  # doctest: +ELLIPSIS
    store ...
    headrace sqlite  500 (500 stored) ... ok
    """
    out = []
    for s in stores:
        if s.save is None or s.put_back is None or s.python is not None or s.env:
            continue
        keys = bw_keys if s.engine == "bytewax" else hr_keys
        variants = [Restore(s, keys, label=s.label)]
        if before is not None and s.engine == "headrace":
            variants.insert(0, Restore(s, keys, before, f"{s.label} before"))
        out.extend(variants)
        python = pythons[s.engine]
        for _ in range(repeat):
            for res in variants:
                run = _cli.run_cli(res.python or python, s.engine, s.fresh(), "restore", 0, parts=1)
                if run.ok and run.items_written == 1:
                    res.baseline.append(_to_first_output(run))
                else:
                    res.problems.append(f"baseline: {run.error or run.items_written}")
        t0 = time.time()
        build = _cli.run_cli(python, s.engine, s.fresh(), "restore", keys, parts=1)
        if not build.ok or build.items_written != keys:
            for res in variants:
                res.problems.append(f"build: {build.error or build.items_written}")
            continue
        loc = s.location()
        stored = None
        if s.engine == "headrace" and loc is not None:
            steps = _show(loc, "restore").get("steps", {})
            stored = steps.get("restore.sum.stateful_batch", {}).get("keys")
        for res in variants:
            res.build_span, res.build_wall, res.stored_keys = build.span, time.time() - t0, stored
        print(
            f"restore {s.label}: built {keys:,} keys, span {build.span:.2f} s, wall "
            f"{time.time() - t0:.2f} s  (load {_cli.load_average()})",
            file=sys.stderr,
            flush=True,
        )
        saved = s.save()
        fresh = True  # the store as built: no need to put the copy back
        for _ in range(repeat):
            for res in variants:
                if not fresh:
                    s.put_back(saved)
                fresh = False
                run = _cli.run_cli(res.python or python, s.engine, _resume_args(s), "restore", keys, parts=1)
                if not run.ok or run.items_written != 1:
                    res.problems.append(f"resume: {run.error or run.items_written} items")
                    continue
                rec = run.records[0]
                res.first_out.append(_to_first_output(run))
                res.run.append(rec["t_exit"] - rec["t_import"])
                res.peak_mb.append(rec.get("peak_rss_mb") or 0.0)
                print(
                    f"restore {res.label}: first output after {res.first_out[-1]:.2f} s, run "
                    f"{res.run[-1]:.2f} s  (load {_cli.load_average()})",
                    file=sys.stderr,
                    flush=True,
                )
        if isinstance(saved, str):
            shutil.rmtree(saved, ignore_errors=True)
    return out


def _resume_args(s: Store) -> list[str]:
    loc = s.location()
    assert loc is not None
    if s.engine == "bytewax":
        return ["-w", "1", "-r", loc, "-s", "1", "-b", "0"]
    return ["-r", loc, "-s", "1", "--metrics-port", "0"]


def restore_table(results: list[Restore], held_mb: float | None = None) -> str:
    """Restore times per store (see `restore`'s example); ``held_mb``: RSS of holding the keys."""
    rows = []
    for r in results:
        first_best, first_med = (
            (min(r.first_out), sorted(r.first_out)[len(r.first_out) // 2]) if r.first_out else (None, None)
        )
        base = sorted(r.baseline)[len(r.baseline) // 2] if r.baseline else None
        net = first_best - base if first_best is not None and base is not None else None
        net_med = first_med - base if first_med is not None and base is not None else None
        run_med = sorted(r.run)[len(r.run) // 2] if r.run else None
        verdict = (
            ""
            if net is None or r.store.engine != "headrace"
            else ("ok" if first_best is not None and first_best < RESTORE_TARGET_S else "MISS")
        )
        peak = sorted(r.peak_mb)[len(r.peak_mb) // 2] if r.peak_mb else None
        rss = f"{peak:.0f}" if peak else ""
        if peak and held_mb and r.store.engine == "headrace":
            rss += f" ({peak / held_mb:.2f}x)"
        rows.append(
            [
                r.label or r.store.label,
                f"{r.keys:,}" + (f" ({r.stored_keys:,} stored)" if r.stored_keys is not None else ""),
                _cli.num(r.build_span, ".1f"),
                _cli.num(base, ".2f"),
                f"{_cli.num(first_best, '.2f')} ({_cli.num(first_med, '.2f')})",
                f"{_cli.num(net, '.2f')} ({_cli.num(net_med, '.2f')})",
                _cli.num(run_med, ".2f"),
                rss,
                "FAILED" if r.problems else verdict,
            ]
        )
    return _cli.render(
        [
            "store",
            "keys",
            "build s",
            "baseline s",
            "restore s best (med)",
            "net s best (med)",
            "run s (med)",
            "peak MB (vs held)",
            f"< {RESTORE_TARGET_S:g} s",
        ],
        rows,
    )


def _bytecode_cache() -> dict[str, str | None]:
    """Give the engines' processes a bytecode cache (a temp dir), as installed engines have.

    Returns the environment variables it changed, as they were.

    Where ``PYTHONDONTWRITEBYTECODE`` is set (as in the sessions that work on
    this repository), every run compiled its checkout's modules again: 0.5-0.9 s
    of each start, counted in the restore times.

    >>> old = _bytecode_cache(); os.environ["PYTHONPYCACHEPREFIX"] in TEMP_DIRS
    True
    >>> for k, v in old.items():
    ...     _ = os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    >>> shutil.rmtree(TEMP_DIRS.pop())
    """
    names = ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    old = {k: os.environ.get(k) for k in names}
    cache = tempfile.mkdtemp(prefix="bench-pycache-")
    TEMP_DIRS.append(cache)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = cache
    return old


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run both benchmarks, print the tables; 0 unless a run failed.

    >>> main(["--quick", "--engines", "headrace", "--items", "300", "--keys", "300"])
    ... # doctest: +ELLIPSIS
    Recovery cost, best of 1 ...
    headrace redis: ... of no-recovery throughput (target >= 90%): ...
    0
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, one repeat")
    parser.add_argument("--repeat", type=int, help="runs per config (default 3, --quick 1)")
    parser.add_argument("--items", type=int, help=f"wordcount lines (default {ITEMS:,})")
    parser.add_argument("--keys", type=int, help=f"keys to restore (default {KEYS:,})")
    parser.add_argument(
        "--bytewax-keys",
        type=int,
        help=f"keys for Bytewax's restore (default {BYTEWAX_KEYS:,}: its resume "
        "time grows faster than linearly, ~1 min at 300k keys)",
    )
    parser.add_argument("--engines", default="headrace,bytewax")
    parser.add_argument("--skip-restore", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-large", action="store_true", help="skip the large-state snapshot runs")
    parser.add_argument(
        "--thread",
        action="store_true",
        help="large state: also Redis with snapshots written by the writer thread (HEADRACE_SNAPSHOT_FORK=0)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="CHECKOUT",
        help="also the engine of another checkout (its runtime/), interleaved: large state on Redis, "
        "and each restore on the same stored state",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    items = args.items or (QUICK_ITEMS if args.quick else ITEMS)
    keys = args.keys or (QUICK_KEYS if args.quick else KEYS)
    engines = args.engines.split(",")
    bytewax = _cli.bytewax_python() if "bytewax" in engines else None
    pythons: dict[str, Any] = {"headrace": sys.executable, "bytewax": bytewax}
    redis_server = RedisServer() if "headrace" in engines else None
    load_before = _cli.load_average()
    started = time.time()
    env_before = _bytecode_cache()
    try:
        stores = make_stores(engines, bytewax, redis_server)
        stores += _variants(stores, args.thread, args.before)
        cells = [] if args.skip_throughput else throughput(stores, pythons, items, repeat)
        large: list[Cell] = []
        held: dict[str, list[float]] = {"rss": [], "peak": []}
        if not args.skip_large and redis_server is not None:
            large, held = large_state(stores, pythons, keys, repeat)
        bw_keys = args.bytewax_keys or min(keys, QUICK_BYTEWAX_KEYS if args.quick else BYTEWAX_KEYS)
        restores = (
            []
            if args.skip_restore
            else restore(
                stores, pythons, keys, bw_keys, repeat, _before_python(args.before) if args.before else None
            )
        )
    finally:
        os.environ.update({k: v for k, v in env_before.items() if v is not None})
        for k in [k for k, v in env_before.items() if v is None]:
            os.environ.pop(k, None)
        if redis_server is not None:
            redis_server.stop()
        for d in TEMP_DIRS:
            shutil.rmtree(d, ignore_errors=True)
    print(
        f"Recovery cost, best of {repeat} (median in parentheses); {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; took {time.time() - started:.0f} s; "
        f"load average before {load_before}, after {_cli.load_average()}"
    )
    failed = False
    if cells:
        print(f"\nwordcount, {items:,} lines, snapshot every 1 s:")
        print(throughput_table(cells))
        for c in cells:
            best = c.rates()[0]
            none = next((x for x in cells if x.store.label == "headrace none"), None)
            if c.store.engine == "headrace" and c is not none and best and none and none.rates()[0]:
                ratio = best / none.rates()[0]  # type: ignore[operator]
                print(
                    f"{c.store.label}: {ratio:.1%} of no-recovery throughput (target >= "
                    f"{RATIO_TARGET:.0%}): {'ok' if ratio >= RATIO_TARGET else 'MISS'}"
                )
    held_mb = sorted(held["rss"])[len(held["rss"]) // 2] if held["rss"] else None
    if large:
        print(
            f"\nLarge state: stateful_map over {keys:,} distinct keys (each changes once), "
            "snapshot every 1 s; thread CPU: the worker thread's CPU time (median), process CPU: "
            "all its threads' (not its forked children's), +CPU: what snapshots add to the "
            "worker thread per epoch; waited: the worker waiting for its snapshot writer:"
        )
        print(large_table(large))
        none = next((c for c in large if c.store.label == "headrace none"), None)
        for redis_cell in large:
            if redis_cell is none or none is None or not none.good() or not redis_cell.good():
                continue
            ratio = redis_cell.med(lambda r: r.span) / none.med(lambda r: r.span)  # type: ignore[operator]
            print(
                f"{redis_cell.store.label}: {ratio:.2f}x the span without recovery (median; target <= "
                f"{LARGE_TARGET:g}x): {'ok' if ratio <= LARGE_TARGET else 'MISS'}"
            )
        if held_mb:
            print(f"holding {keys:,} keys without recovery: RSS {held_mb:.0f} MB at exit (median)")
    if restores:
        print(
            "\nRestore (stateful_map state), seconds from importing the dataflow to the first "
            "output of a resumed run; peak MB: its peak RSS, against holding the keys "
            f"(target <= {RSS_TARGET:g}x):"
        )
        print(restore_table(restores, held_mb))
    for c in [*cells, *large]:
        for p in c.problems:
            failed = True
            print(f"note: {c.store.label} failed: {p}")
    for r in restores:
        for p in r.problems:
            failed = True
            print(f"note: restore {r.store.label} failed: {p}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "load_before": load_before,
                    "throughput": [
                        {
                            "config": c.store.label,
                            "runs": [
                                {"wall": r.wall, "records": r.records, "error": r.error} for r in c.runs
                            ],
                            "disk_mb": c.disk_mb,
                        }
                        for c in cells
                    ],
                    "large_state": [
                        {
                            "config": c.store.label,
                            "runs": [
                                {"wall": r.wall, "records": r.records, "error": r.error} for r in c.runs
                            ],
                        }
                        for c in large
                    ],
                    "restore": [
                        {k: v for k, v in vars(r).items() if k not in ("store", "python")}
                        | {"store": r.label or r.store.label}
                        for r in restores
                    ],
                },
                indent=1,
            )
            + "\n"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
